//! HDF5 IO: files written by h5py, round trips, atomic writes and every validation error.

use caloforge_core::io::{write_atomic, write_showers, ShowerFile};

use caloforge_core::DatasetKind;
use hdf5_pure::FileBuilder;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn value(i: usize, j: usize) -> f64 {
    (((7 * i + j) % 13) as f64) * 0.25
}

fn check_values(f: &ShowerFile, n: usize, v: usize) {
    let data = f.read_rows(0, n).unwrap();
    assert_eq!(data.len(), n * v);
    for i in 0..n {
        for j in 0..v {
            assert_eq!(data[i * v + j], value(i, j), "row {i} voxel {j}");
        }
    }
    // Windowed reads give the same values.
    let w = f.read_rows(1, 2).unwrap();
    assert_eq!(&w[..], &data[v..3 * v]);
}

#[test]
fn reads_h5py_gzip_shuffle_chunked_f32() {
    let f = ShowerFile::open(&fixture("h5py_ds2_f32_gzip_chunked.h5"), Some(6480)).unwrap();
    assert_eq!(f.len(), 5);
    assert_eq!(f.energies, vec![1000.0, 2000.0, 5000.0, 1e4, 1e5]);
    check_values(&f, 5, 6480);
}

#[test]
fn reads_h5py_contiguous_f64_with_flat_energies() {
    let f = ShowerFile::open(
        &fixture("h5py_photons_f64_contiguous_flat_energies.h5"),
        Some(368),
    )
    .unwrap();
    assert_eq!(f.energies, vec![256.0, 4096.0, 65536.0, 4194304.0]);
    check_values(&f, 4, 368);
}

#[test]
fn reads_h5py_f32_energies() {
    let f = ShowerFile::open(&fixture("h5py_pions_f32_energies_f32.h5"), Some(533)).unwrap();
    assert_eq!(f.energies, vec![256.0, 65536.0, 4194304.0]);
    check_values(&f, 3, 533);
}

#[test]
fn caloforge_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.h5");
    let n = 300; // several chunks and appends
    let v = DatasetKind::Ds2.n_voxels();
    let e: Vec<f64> = (0..n).map(|i| 1000.0 + i as f64).collect();
    let s: Vec<f32> = (0..n * v).map(|k| value(k / v, k % v) as f32).collect();
    // Written in three appends of uneven size.
    let mut w = caloforge_core::ShowerWriter::create(&path, v, n).unwrap();
    for (a, b) in [(0, 7), (7, 200), (200, n)] {
        w.append(&e[a..b], &s[a * v..b * v]).unwrap();
    }
    assert!(
        w.append(&e[..1], &s[..5]).is_err(),
        "row/voxel mismatch is refused"
    );
    assert_eq!(w.finish().unwrap(), n);
    let f = ShowerFile::open(&path, Some(v)).unwrap();
    assert_eq!(f.energies, e);
    check_values(&f, n, v);
    // Stored as the CaloChallenge does: float32 showers, (N, 1) float64 energies, compressed.
    let raw = hdf5_pure::File::open(&path).unwrap();
    assert_eq!(
        raw.dataset("incident_energies").unwrap().shape().unwrap(),
        vec![n as u64, 1]
    );
    assert_eq!(
        raw.dataset("showers").unwrap().dtype().unwrap(),
        hdf5_pure::DType::F32
    );
    assert!(raw
        .dataset("showers")
        .unwrap()
        .chunk_shape()
        .unwrap()
        .is_some());
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn unwritable_output_is_an_error_before_work_starts() {
    let err =
        write_showers(Path::new("/nonexistent-dir/x.h5"), &[1.0], &[0.0; 368], 368).unwrap_err();
    assert!(err.to_string().contains("/nonexistent-dir/x.h5"), "{err}");
}

fn write_bad(dir: &Path, name: &str, build: impl FnOnce(&mut FileBuilder)) -> PathBuf {
    let p = dir.join(name);
    write_atomic(&p, build).unwrap();
    p
}

fn open_err(p: &Path, voxels: Option<usize>) -> String {
    let msg = ShowerFile::open(p, voxels)
        .and_then(|f| f.read_rows(0, f.len()))
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        msg.contains(&p.display().to_string()),
        "error must name the file: {msg}"
    );
    msg
}

#[test]
fn validation_errors_name_file_dataset_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = write_bad(d, "missing.h5", |b| {
        b.create_dataset("showers")
            .with_f64_data(&[0.0; 4])
            .with_shape(&[1, 4]);
    });
    assert!(open_err(&p, None).contains("missing dataset 'incident_energies'"));

    let p = write_bad(d, "rows.h5", |b| {
        b.create_dataset("incident_energies")
            .with_f64_data(&[1.0, 2.0])
            .with_shape(&[2, 1]);
        b.create_dataset("showers")
            .with_f64_data(&[0.0; 12])
            .with_shape(&[3, 4]);
    });
    assert!(open_err(&p, None).contains("has 3 rows but 'incident_energies' has 2"));

    let p = write_bad(d, "voxels.h5", |b| {
        b.create_dataset("incident_energies")
            .with_f64_data(&[1.0])
            .with_shape(&[1, 1]);
        b.create_dataset("showers")
            .with_f64_data(&[0.0; 4])
            .with_shape(&[1, 4]);
    });
    assert!(open_err(&p, Some(368)).contains("has 4 voxels per shower, the dataset needs 368"));

    let p = write_bad(d, "nan.h5", |b| {
        b.create_dataset("incident_energies")
            .with_f64_data(&[1.0, 1.0])
            .with_shape(&[2, 1]);
        b.create_dataset("showers")
            .with_f64_data(&[0.0, 1.0, 2.0, f64::NAN])
            .with_shape(&[2, 2]);
    });
    let m = open_err(&p, None);
    assert!(m.contains("row 1, voxel 1 is not finite"), "{m}");

    let p = write_bad(d, "neg.h5", |b| {
        b.create_dataset("incident_energies")
            .with_f64_data(&[1.0, 1.0])
            .with_shape(&[2, 1]);
        b.create_dataset("showers")
            .with_f32_data(&[0.0, -1.0, 2.0, 3.0])
            .with_shape(&[2, 2]);
    });
    assert!(open_err(&p, None).contains("row 0, voxel 1 is negative"));

    let p = write_bad(d, "einc.h5", |b| {
        b.create_dataset("incident_energies")
            .with_f64_data(&[1.0, 0.0])
            .with_shape(&[2, 1]);
        b.create_dataset("showers")
            .with_f64_data(&[0.0; 4])
            .with_shape(&[2, 2]);
    });
    assert!(open_err(&p, None).contains("'incident_energies' row 1 is 0 MeV"));

    let p = write_bad(d, "einc_inf.h5", |b| {
        b.create_dataset("incident_energies")
            .with_f64_data(&[f64::INFINITY])
            .with_shape(&[1]);
        b.create_dataset("showers")
            .with_f64_data(&[0.0; 2])
            .with_shape(&[1, 2]);
    });
    assert!(open_err(&p, None).contains("row 0 is not finite"));

    let p = write_bad(d, "int.h5", |b| {
        b.create_dataset("incident_energies")
            .with_f64_data(&[1.0])
            .with_shape(&[1, 1]);
        b.create_dataset("showers")
            .with_i32_data(&[1, 2])
            .with_shape(&[1, 2]);
    });
    assert!(open_err(&p, None).contains("expected float32 or float64"));

    let p = d.join("not_hdf5.h5");
    std::fs::write(&p, b"hello").unwrap();
    assert!(open_err(&p, None).contains("not a readable HDF5 file"));
    assert!(open_err(&d.join("absent.h5"), None).contains("no such file"));
}

#[test]
fn large_files_keep_chunks_below_libhdf5_limit() {
    // hdf5-pure 0.47 encodes chunk dimensions >= 65536 in a way libhdf5 (h5py) refuses.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.h5");
    let n = 70_000;
    write_showers(&path, &vec![1000.0; n], &vec![0.5f32; 2 * n], 2).unwrap();
    let raw = hdf5_pure::File::open(&path).unwrap();
    for ds in ["incident_energies", "showers"] {
        let c = raw.dataset(ds).unwrap().chunk_shape().unwrap().unwrap();
        assert!(c[0] < 65_536, "{ds}: chunk {c:?}");
    }
    let f = ShowerFile::open(&path, Some(2)).unwrap();
    assert_eq!(f.len(), n);
    assert_eq!(f.read_rows(n - 1, 1).unwrap(), vec![0.5, 0.5]);
}

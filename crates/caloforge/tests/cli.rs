//! The command-line tool: errors, exit codes, no partial outputs, determinism, round trips.

use std::path::Path;
use std::process::{Command, Output};

fn caloforge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_caloforge"))
        .args(args)
        .arg("--quiet")
        .output()
        .expect("runs")
}

fn err_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn failed_with(o: &Output, needle: &str) {
    assert!(!o.status.success(), "should fail");
    let e = err_text(o);
    assert!(e.contains(needle), "stderr lacks {needle:?}: {e}");
    assert!(!e.contains("panicked"), "{e}");
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn simulate_rejects_bad_arguments_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.h5");
    let o = out.to_str().unwrap();
    failed_with(
        &caloforge(&["simulate", "-n", "0", "--out", o]),
        "--n must be > 0",
    );
    failed_with(
        &caloforge(&["simulate", "-n", "5", "--energy=-3", "--out", o]),
        "--energy must be a positive",
    );
    failed_with(
        &caloforge(&["simulate", "-n", "5", "--energy-min=-1", "--out", o]),
        "--energy-min",
    );
    failed_with(
        &caloforge(&["simulate", "-n", "5", "-d", "1-photons", "--out", o]),
        "dataset-2/3 detector",
    );
    failed_with(
        &caloforge(&["simulate", "-n", "5", "--tune", "best", "--out", o]),
        "unknown tune",
    );
    failed_with(
        &caloforge(&["simulate", "-n", "5", "--out", "/nonexistent-dir/x.h5"]),
        "/nonexistent-dir/x.h5",
    );
    failed_with(
        &caloforge(&[
            "simulate",
            "-n",
            "5",
            "--energies-from",
            "/nonexistent.h5",
            "--out",
            o,
        ]),
        "/nonexistent.h5: no such file",
    );
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
}

#[test]
fn simulate_is_deterministic_across_threads_and_energies_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let a = caloforge(&["simulate", "-n", "50", "--seed", "5", "--out", &p("a.h5")]);
    assert!(a.status.success(), "{}", err_text(&a));
    let b = caloforge(&[
        "--threads",
        "1",
        "simulate",
        "-n",
        "50",
        "--seed",
        "5",
        "--out",
        &p("b.h5"),
    ]);
    assert!(b.status.success(), "{}", err_text(&b));
    let fa = caloforge_core::ShowerFile::open(Path::new(&p("a.h5")), Some(6480)).unwrap();
    let fb = caloforge_core::ShowerFile::open(Path::new(&p("b.h5")), Some(6480)).unwrap();
    assert_eq!(fa.energies, fb.energies);
    assert_eq!(fa.read_rows(0, 50).unwrap(), fb.read_rows(0, 50).unwrap());
    assert!(fa.energies.iter().all(|&e| (1e3..=1e6).contains(&e)));
    // --energies-from reuses the energies in order; --both writes the same showers on both meshes.
    let c = caloforge(&[
        "simulate",
        "--energies-from",
        &p("a.h5"),
        "--both",
        "--seed",
        "9",
        "--out",
        &p("c.h5"),
    ]);
    assert!(c.status.success(), "{}", err_text(&c));
    let c2 = caloforge_core::ShowerFile::open(Path::new(&p("c_ds2.h5")), Some(6480)).unwrap();
    let c3 = caloforge_core::ShowerFile::open(Path::new(&p("c_ds3.h5")), Some(40500)).unwrap();
    assert_eq!(c2.energies, fa.energies);
    assert_eq!(c3.energies, fa.energies);
    // Same spots on both meshes: per-layer energies agree (both meshes span 41.85 mm), up to
    // the per-voxel threshold.
    let s2 = c2.read_rows(0, 1).unwrap();
    let s3 = c3.read_rows(0, 1).unwrap();
    let l2: f64 = s2[..144 * 10].iter().sum();
    let l3: f64 = s3[..900 * 10].iter().sum();
    assert!((l2 - l3).abs() / l2 < 0.02, "{l2} vs {l3}");
    // A JSON summary lies next to the output.
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("c.json")).unwrap()).unwrap();
    assert_eq!(j["n"], 50);
    // Fixed energy.
    let d = caloforge(&[
        "simulate",
        "-n",
        "3",
        "--energy",
        "5000",
        "--out",
        &p("d.h5"),
    ]);
    assert!(d.status.success());
    assert_eq!(
        caloforge_core::ShowerFile::open(Path::new(&p("d.h5")), None)
            .unwrap()
            .energies,
        vec![5000.0; 3]
    );
}

#[test]
fn evaluate_and_features_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    assert!(caloforge(&["simulate", "-n", "20", "--out", &p("a.h5")])
        .status
        .success());
    failed_with(
        &caloforge(&["evaluate", "-d", "7", "-i", &p("a.h5"), "-r", &p("a.h5")]),
        "unknown dataset",
    );
    failed_with(
        &caloforge(&[
            "evaluate",
            "-d",
            "2",
            "-m",
            "best",
            "-i",
            &p("a.h5"),
            "-r",
            &p("a.h5"),
        ]),
        "unknown mode",
    );
    failed_with(
        &caloforge(&[
            "evaluate",
            "-d",
            "3",
            "-i",
            &p("a.h5"),
            "-r",
            &p("a.h5"),
            "--out",
            &p("ev"),
        ]),
        "6480 voxels per shower, the dataset needs 40500",
    );
    failed_with(
        &caloforge(&[
            "features",
            "-d",
            "2",
            "-i",
            &p("missing.h5"),
            "--out",
            &p("f.h5"),
        ]),
        "missing.h5: no such file",
    );
    assert!(!Path::new(&p("f.h5")).exists());
    // A working features call writes every feature with the documented shapes.
    let o = caloforge(&["features", "-d", "2", "-i", &p("a.h5"), "--out", &p("f.h5")]);
    assert!(o.status.success(), "{}", err_text(&o));
    let f = hdf5_pure::File::open(p("f.h5")).unwrap();
    assert_eq!(f.dataset("E_tot").unwrap().shape().unwrap(), vec![20]);
    for k in [
        "E_layer", "EC_x", "EC_y", "W_x", "W_y", "EC_r", "W_r", "sparsity",
    ] {
        assert_eq!(f.dataset(k).unwrap().shape().unwrap(), vec![20, 45], "{k}");
    }
    let o = caloforge(&[
        "evaluate",
        "-d",
        "2",
        "-m",
        "hist-chi",
        "-i",
        &p("a.h5"),
        "-r",
        &p("a.h5"),
        "--out",
        &p("ev"),
    ]);
    assert!(o.status.success(), "{}", err_text(&o));
    let t = std::fs::read_to_string(p("ev/histogram_chi2_2.txt")).unwrap();
    assert!(t.contains("Etot / Einc: \n0.0\n\n"), "{t}");
}

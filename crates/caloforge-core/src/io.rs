//! CaloChallenge HDF5 shower files (SPEC §1): streaming, validating reader and atomic writer.
//!
//! A file holds `incident_energies` ((N,1) or (N,), MeV) and `showers` ((N,V), MeV), float32 or
//! float64, gzip-compressed or not, chunked or not. The reader keeps the incident energies in
//! memory and reads showers in row windows so that files larger than memory can be processed.

use crate::error::{CoreError, Result};
use hdf5_pure::{DType, File, FileBuilder};
use std::path::{Path, PathBuf};

/// Name of the incident-energy dataset.
pub const ENERGIES: &str = "incident_energies";
/// Name of the shower dataset.
pub const SHOWERS: &str = "showers";

/// Element type of a stored dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F64,
}

/// An open shower file, validated for shape, with its incident energies loaded.
pub struct ShowerFile {
    path: PathBuf,
    file: File,
    /// Incident energies (MeV), one per shower.
    pub energies: Vec<f64>,
    /// Number of voxels per shower.
    pub n_voxels: usize,
    /// Stored precision of the showers.
    pub precision: Precision,
}

fn float_precision(path: &Path, name: &str, dt: DType) -> Result<Precision> {
    match dt {
        DType::F32 => Ok(Precision::F32),
        DType::F64 => Ok(Precision::F64),
        other => Err(CoreError::data(
            path.display(),
            format!("dataset '{name}' has element type {other}, expected float32 or float64"),
        )),
    }
}

impl ShowerFile {
    /// Opens `path`, checks both datasets and their shapes, and validates the incident energies
    /// (finite, > 0). `expected_voxels` checks the voxel count of the dataset.
    pub fn open(path: &Path, expected_voxels: Option<usize>) -> Result<Self> {
        let disp_s = path.display().to_string();
        let disp = disp_s.as_str();
        if !path.exists() {
            return Err(CoreError::data(disp, "no such file"));
        }
        let file = File::open_streaming(path)
            .map_err(|e| CoreError::data(disp, format!("not a readable HDF5 file: {e}")))?;
        let names = file.root().datasets().unwrap_or_default();
        for need in [ENERGIES, SHOWERS] {
            if !names.iter().any(|n| n == need || n == &format!("/{need}")) {
                return Err(CoreError::data(
                    disp,
                    format!("missing dataset '{need}' (found: {})", names.join(", ")),
                ));
            }
        }
        let eds = file
            .dataset(ENERGIES)
            .map_err(|e| CoreError::data(disp, format!("cannot open '{ENERGIES}': {e}")))?;
        let eshape = eds
            .shape()
            .map_err(|e| CoreError::data(disp, format!("'{ENERGIES}': {e}")))?;
        let n_e = match eshape.as_slice() {
            [n] => *n as usize,
            [n, 1] => *n as usize,
            s => {
                return Err(CoreError::data(
                    disp,
                    format!("dataset '{ENERGIES}' has shape {s:?}, expected (N, 1) or (N,)"),
                ))
            }
        };
        float_precision(
            path,
            ENERGIES,
            eds.dtype()
                .map_err(|e| CoreError::data(disp, e.to_string()))?,
        )?;
        let sds = file
            .dataset(SHOWERS)
            .map_err(|e| CoreError::data(disp, format!("cannot open '{SHOWERS}': {e}")))?;
        let sshape = sds
            .shape()
            .map_err(|e| CoreError::data(disp, format!("'{SHOWERS}': {e}")))?;
        let (n_s, n_voxels) = match sshape.as_slice() {
            [n, v] => (*n as usize, *v as usize),
            s => {
                return Err(CoreError::data(
                    disp,
                    format!("dataset '{SHOWERS}' has shape {s:?}, expected (N, voxels)"),
                ))
            }
        };
        let precision = float_precision(
            path,
            SHOWERS,
            sds.dtype()
                .map_err(|e| CoreError::data(disp, e.to_string()))?,
        )?;
        if n_s != n_e {
            return Err(CoreError::data(
                disp,
                format!("'{SHOWERS}' has {n_s} rows but '{ENERGIES}' has {n_e}"),
            ));
        }
        if let Some(v) = expected_voxels {
            if v != n_voxels {
                return Err(CoreError::data(
                    disp,
                    format!("'{SHOWERS}' has {n_voxels} voxels per shower, the dataset needs {v}"),
                ));
            }
        }
        if n_s == 0 {
            return Err(CoreError::data(disp, "file holds no showers (N = 0)"));
        }
        let energies = eds
            .read_f64()
            .map_err(|e| CoreError::data(disp, format!("cannot read '{ENERGIES}': {e}")))?;
        for (row, &e) in energies.iter().enumerate() {
            if !e.is_finite() {
                return Err(CoreError::data(
                    disp,
                    format!("'{ENERGIES}' row {row} is not finite ({e})"),
                ));
            }
            if e <= 0.0 {
                return Err(CoreError::data(
                    disp,
                    format!("'{ENERGIES}' row {row} is {e} MeV; incident energies must be > 0"),
                ));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            energies,
            n_voxels,
            precision,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of showers.
    pub fn len(&self) -> usize {
        self.energies.len()
    }

    /// Whether the file holds no showers (never true for an opened file).
    pub fn is_empty(&self) -> bool {
        self.energies.is_empty()
    }

    /// Reads showers `[start, start+count)` as f64 (row-major), validated: every value finite
    /// and non-negative.
    pub fn read_rows(&self, start: usize, count: usize) -> Result<Vec<f64>> {
        self.read_window(&self.file, start, count)
    }

    /// [`read_rows`](Self::read_rows) through the given handle of this file.
    fn read_window(&self, file: &File, start: usize, count: usize) -> Result<Vec<f64>> {
        let ds = file.dataset(SHOWERS).map_err(|e| {
            CoreError::data(self.path.display(), format!("cannot open '{SHOWERS}': {e}"))
        })?;
        let count = count.min(self.len().saturating_sub(start));
        let v = ds.read_f64_rows(start as u64, count as u64).map_err(|e| {
            CoreError::data(
                self.path.display(),
                format!(
                    "cannot read '{SHOWERS}' rows {start}..{}: {e}",
                    start + count
                ),
            )
        })?;
        self.validate(start, &v)?;
        Ok(v)
    }

    fn validate(&self, start: usize, v: &[f64]) -> Result<()> {
        for (i, &x) in v.iter().enumerate() {
            if !x.is_finite() || x < 0.0 {
                return Err(self.bad_value(start, i, x));
            }
        }
        Ok(())
    }

    fn bad_value(&self, start: usize, i: usize, x: f64) -> CoreError {
        let row = start + i / self.n_voxels;
        let col = i % self.n_voxels;
        let what = if x.is_finite() {
            "negative"
        } else {
            "not finite"
        };
        CoreError::data(
            self.path.display(),
            format!("'{SHOWERS}' row {row}, voxel {col} is {what} ({x}); voxel energies must be finite and >= 0"),
        )
    }

    /// Reads the showers window by window (`rows` per window, validated as in
    /// [`read_rows`](Self::read_rows)), calls `f(first_row, window)` on each and returns the
    /// results in file order. Windows are read and processed `threads` at a time in parallel,
    /// each through its own file handle (decompression is the bottleneck of a pass), so memory
    /// stays at about `threads` windows.
    pub fn map_windows<R: Send>(
        &self,
        rows: usize,
        f: impl Fn(usize, Vec<f64>) -> Result<R> + Sync,
    ) -> Result<Vec<R>> {
        use rayon::prelude::*;
        let rows = rows.max(1);
        let starts: Vec<usize> = (0..self.len()).step_by(rows).collect();
        let threads = rayon::current_num_threads().max(1);
        let mut out = Vec::with_capacity(starts.len());
        for group in starts.chunks(threads) {
            let part: Vec<Result<R>> = group
                .par_iter()
                .map(|&start| {
                    let file = File::open_streaming(&self.path).map_err(|e| {
                        CoreError::data(
                            self.path.display(),
                            format!("not a readable HDF5 file: {e}"),
                        )
                    })?;
                    f(start, self.read_window(&file, start, rows)?)
                })
                .collect();
            for r in part {
                out.push(r?);
            }
        }
        Ok(out)
    }

    /// Rows per read window so that one window holds about `bytes` of f64 values.
    pub fn rows_per_window(&self, bytes: usize) -> usize {
        (bytes / (8 * self.n_voxels.max(1))).max(1)
    }
}

/// Writes `path` atomically: `build` fills a [`FileBuilder`], which is written to a temporary
/// file in the same directory and renamed over `path` only on success.
pub fn write_atomic(path: &Path, build: impl FnOnce(&mut FileBuilder)) -> Result<()> {
    let tmp = temp_path(path);
    let mut b = FileBuilder::new();
    build(&mut b);
    let res = b
        .write(&tmp)
        .map_err(|e| CoreError::write(path.display(), e.to_string()))
        .and_then(|_| {
            std::fs::rename(&tmp, path).map_err(|e| CoreError::write(path.display(), e.to_string()))
        });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// The temporary sibling path used for an atomic write of `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Checks that the directory of `path` exists and is writable, before long work starts.
pub fn check_writable(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(CoreError::write(
            path.display(),
            format!("directory {} does not exist", dir.display()),
        ));
    }
    let probe = temp_path(path);
    std::fs::write(&probe, b"").map_err(|e| {
        CoreError::write(
            path.display(),
            format!("directory {} is not writable: {e}", dir.display()),
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Largest chunk extent written along the row axis. libhdf5 (h5py) refuses chunk dimensions of
/// 65536 and more as written by hdf5-pure 0.47 ("stored chunk dimension encoding length does not
/// match"), so chunks stay below that.
pub const MAX_CHUNK_ROWS: u64 = 8192;

/// Rows per HDF5 chunk for showers of `n_voxels`: about 256 KiB of float32 per chunk.
pub fn chunk_rows(n_voxels: usize, n: usize) -> usize {
    (65_536 / n_voxels.max(1)).clamp(1, n.max(1))
}

/// Writes showers to a CaloChallenge file: gzip (level 4), shuffle, chunked float32 showers and
/// float64 incident energies of shape (N, 1), written to a temporary file and renamed over the
/// target by [`finish`](Self::finish); nothing is written if the writer is dropped unfinished.
///
/// Memory: the showers are held until `finish` (N × voxels × 4 bytes, about twice that while the
/// file is encoded), because the pure-Rust HDF5 writer appends in place to rank-1 datasets only.
pub struct ShowerWriter {
    target: PathBuf,
    n_voxels: usize,
    energies: Vec<f64>,
    showers: Vec<f32>,
}

impl ShowerWriter {
    /// Starts a file of showers with `n_voxels` voxels; `expected_rows` reserves memory.
    pub fn create(path: &Path, n_voxels: usize, expected_rows: usize) -> Result<Self> {
        check_writable(path)?;
        Ok(Self {
            target: path.to_path_buf(),
            n_voxels,
            energies: Vec::with_capacity(expected_rows),
            showers: Vec::with_capacity(expected_rows.saturating_mul(n_voxels)),
        })
    }

    /// Appends showers (row-major, `energies.len()` rows).
    pub fn append(&mut self, energies: &[f64], showers: &[f32]) -> Result<()> {
        if showers.len() != energies.len() * self.n_voxels {
            return Err(CoreError::Invalid(format!(
                "writer for {}: {} values for {} showers of {} voxels",
                self.target.display(),
                showers.len(),
                energies.len(),
                self.n_voxels
            )));
        }
        self.energies.extend_from_slice(energies);
        self.showers.extend_from_slice(showers);
        Ok(())
    }

    /// Writes the file (atomically) and returns the number of showers.
    pub fn finish(self) -> Result<usize> {
        let n = self.energies.len();
        if n == 0 {
            return Err(CoreError::Invalid(format!(
                "no showers to write to {}",
                self.target.display()
            )));
        }
        let v = self.n_voxels as u64;
        let chunk = chunk_rows(self.n_voxels, n) as u64;
        write_atomic(&self.target, |b| {
            b.create_dataset(ENERGIES)
                .with_f64_data(&self.energies)
                .with_shape(&[n as u64, 1])
                .with_chunks(&[(n as u64).min(MAX_CHUNK_ROWS), 1])
                .with_deflate(4);
            b.create_dataset(SHOWERS)
                .with_f32_data(&self.showers)
                .with_shape(&[n as u64, v])
                .with_chunks(&[chunk, v])
                .with_shuffle()
                .with_deflate(4);
        })?;
        Ok(n)
    }
}

/// Writes a whole set of showers at once (see [`ShowerWriter`]).
pub fn write_showers(
    path: &Path,
    energies: &[f64],
    showers: &[f32],
    n_voxels: usize,
) -> Result<()> {
    let mut w = ShowerWriter::create(path, n_voxels, energies.len())?;
    w.append(energies, showers)?;
    w.finish().map(|_| ())
}

//! CaloChallenge HDF5 shower files (SPEC §1): streaming, validating reader and atomic writer.
//!
//! A file holds `incident_energies` ((N,1) or (N,), MeV) and `showers` ((N,V), MeV), float32 or
//! float64, gzip-compressed or not, chunked or not. The reader keeps the incident energies in
//! memory and reads showers in row windows so that files larger than memory can be processed.

use crate::error::{CoreError, Result};
use crate::h5stream::{Elem, H5StreamWriter, Spec};
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
    let tmp = TempFile::new(path);
    let mut b = FileBuilder::new();
    build(&mut b);
    b.write(tmp.path())
        .map_err(|e| CoreError::write(path.display(), e.to_string()))?;
    tmp.persist()
}

/// Writes `bytes` to `path` atomically (temporary sibling, then rename): a reader never sees a
/// partial file, and an interrupted write leaves the old file in place. The one atomic-write
/// helper of the workspace (text, JSON, weights, checkpoints).
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = TempFile::new(path);
    std::fs::write(tmp.path(), bytes)
        .map_err(|e| CoreError::write(path.display(), e.to_string()))?;
    tmp.persist()
}

/// The temporary sibling path used for an atomic write of `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let k = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp{}-{k}", std::process::id()))
}

/// Temporary files being written (removed by [`remove_temp_files`] when the process is
/// interrupted).
static TEMP_FILES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A temporary sibling of a target file: registered for clean-up on interruption, removed when
/// dropped unless [`persist`](Self::persist) renamed it over the target.
pub struct TempFile {
    tmp: PathBuf,
    target: PathBuf,
}

impl TempFile {
    /// A fresh temporary path next to `target`.
    pub fn new(target: &Path) -> Self {
        let tmp = temp_path(target);
        if let Ok(mut g) = TEMP_FILES.lock() {
            g.push(tmp.clone());
        }
        TempFile {
            tmp,
            target: target.to_path_buf(),
        }
    }
    /// The temporary path to write.
    pub fn path(&self) -> &Path {
        &self.tmp
    }
    /// Renames the temporary file over the target.
    pub fn persist(self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.target)
            .map_err(|e| CoreError::write(self.target.display(), e.to_string()))
        // Drop unregisters (and removes the temporary if the rename failed).
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
        if let Ok(mut g) = TEMP_FILES.lock() {
            g.retain(|p| p != &self.tmp);
        }
    }
}

/// Removes every temporary file still being written (called by the CLI's signal handler before
/// it exits on Ctrl-C/SIGTERM).
pub fn remove_temp_files() {
    if let Ok(g) = TEMP_FILES.lock() {
        for p in g.iter() {
            let _ = std::fs::remove_file(p);
        }
    }
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

/// Largest incident energy any command accepts (MeV): 10 TeV, ten times the CaloChallenge range.
pub const MAX_INCIDENT_MEV: f64 = 1e7;
/// Smallest incident energy any command accepts (MeV).
pub const MIN_INCIDENT_MEV: f64 = 1.0;

/// Checks an incident-energy range in MeV: finite, lo <= hi, within
/// [`MIN_INCIDENT_MEV`, `MAX_INCIDENT_MEV`] (an eV or GeV slip gives a clear error instead of
/// hours of work).
pub fn check_energy_range(lo: f64, hi: f64) -> Result<()> {
    if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && hi >= lo) {
        return Err(CoreError::Invalid(format!(
            "need 0 < --energy-min <= --energy-max (MeV), got {lo} and {hi}"
        )));
    }
    for e in [lo, hi] {
        if !(MIN_INCIDENT_MEV..=MAX_INCIDENT_MEV).contains(&e) {
            return Err(CoreError::Invalid(format!(
                "incident energy {e} MeV is outside {MIN_INCIDENT_MEV} MeV to {MAX_INCIDENT_MEV:e} MeV (10 TeV); energies are in MeV (1 GeV = 1000)"
            )));
        }
    }
    Ok(())
}

/// Whether two paths name the same existing file (same device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Checks an output file path before any work: its directory exists and is writable; whatever
/// is already at the path is a regular file (a symbolic link, FIFO, device node or directory
/// is refused rather than replaced); and it is none of `inputs` (which it would destroy).
pub fn check_output(path: &Path, inputs: &[&Path]) -> Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        let ft = m.file_type();
        let what = if ft.is_symlink() {
            Some("a symbolic link")
        } else if ft.is_dir() {
            Some("a directory")
        } else if !ft.is_file() {
            Some("not a regular file (FIFO, socket or device)")
        } else {
            None
        };
        if let Some(w) = what {
            return Err(CoreError::write(
                path.display(),
                format!("the path is {w}; refusing to replace it (choose another output path)"),
            ));
        }
    }
    for i in inputs {
        if same_file(path, i) {
            return Err(CoreError::write(
                path.display(),
                format!(
                    "this is the input file {}; writing it would destroy the input",
                    i.display()
                ),
            ));
        }
    }
    check_writable(path)
}

/// The JSON summary written beside output file `out`: `out` with `.json` appended
/// (`gen.h5` → `gen.h5.json`), so that it never equals the output. Refused when something that
/// is not a caloforge summary is already there, or when it is one of `inputs`.
pub fn summary_path(out: &Path, inputs: &[&Path]) -> Result<PathBuf> {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".json");
    let p = out.with_file_name(name);
    check_output(&p, inputs)?;
    if p.exists() {
        let ours = std::fs::read_to_string(&p)
            .map(|t| t.trim_start().starts_with('{') && t.contains("\"caloforge_version\""))
            .unwrap_or(false);
        if !ours {
            return Err(CoreError::write(
                p.display(),
                "the summary of the output would go here, but this file is not a caloforge summary; refusing to replace it",
            ));
        }
    }
    Ok(p)
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
/// target by [`finish`](Self::finish); nothing is left if the writer is dropped unfinished.
///
/// Memory is bounded whatever N: each chunk (about 256 KiB of showers) goes to disk as soon as
/// its rows are appended ([`crate::h5stream`]), so a caller holds one batch at a time.
pub struct ShowerWriter {
    target: PathBuf,
    n_voxels: usize,
    tmp: TempFile,
    out: H5StreamWriter,
}

impl ShowerWriter {
    /// Starts a file of showers with `n_voxels` voxels; `expected_rows` chooses the chunking
    /// (the file holds however many rows are appended).
    pub fn create(path: &Path, n_voxels: usize, expected_rows: usize) -> Result<Self> {
        check_writable(path)?;
        let tmp = TempFile::new(path);
        let out = H5StreamWriter::create(
            tmp.path(),
            &[
                Spec {
                    name: ENERGIES,
                    elem: Elem::F64,
                    cols: Some(1),
                    chunk_rows: (expected_rows as u64).clamp(1, MAX_CHUNK_ROWS),
                    compress: true,
                },
                Spec {
                    name: SHOWERS,
                    elem: Elem::F32,
                    cols: Some(n_voxels as u64),
                    chunk_rows: chunk_rows(n_voxels, expected_rows) as u64,
                    compress: true,
                },
            ],
            4,
        )
        .map_err(|e| CoreError::write(path.display(), e))?;
        Ok(Self {
            target: path.to_path_buf(),
            n_voxels,
            tmp,
            out,
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
        let target = &self.target;
        self.out
            .append_f64(0, energies)
            .and_then(|_| self.out.append_f32(1, showers))
            .map_err(|e| CoreError::write(target.display(), e))
    }

    /// Completes the file, renames it over the target and returns the number of showers.
    pub fn finish(self) -> Result<usize> {
        let n = self.out.rows(0) as usize;
        if n == 0 {
            return Err(CoreError::Invalid(format!(
                "no showers to write to {}",
                self.target.display()
            )));
        }
        self.out
            .finish()
            .map_err(|e| CoreError::write(self.target.display(), e))?;
        self.tmp.persist()?;
        Ok(n)
    }
}

/// Memory available to this process (bytes): /proc/meminfo's MemAvailable, where it exists.
pub fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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

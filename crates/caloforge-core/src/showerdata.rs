//! Point-cloud showers in the ShowerData layout (the `showerdata` Python package, 0.7, of
//! FLC-QU-hep/ShowerData, used by AllShowers): datasets
//! - `showers` (N,): one variable-length float32 sequence per shower, its points flattened
//!   (x, y, z, E[, t] each),
//! - `num_points` (N,) int32, `energies` (N, 1) float32, `directions` (N, 3) float32 (unit
//!   vectors), `pdg` (N,) int32, `shower_ids` (N,) int32,
//! - `shape` (3,) int: (N, most points in a shower, values per point).
//!
//! [`PointWriter`] writes the same layout, streaming, and [`PointFile`] reads it. The
//! variable-length sequences are HDF5 global-heap objects: the
//! dataset holds a 16-byte reference per shower (sequence length u32, heap collection address
//! u64, object index u32), which this module resolves by reading the collections ("GCOL") from
//! the file, only those the requested showers need.

use crate::error::{CoreError, Result};
use crate::h5stream::{Elem, H5StreamWriter, Spec};
use crate::io::{check_writable, TempFile};
use hdf5_pure::File;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// An open ShowerData file: its per-shower metadata, and the points read on demand.
pub struct PointFile {
    path: PathBuf,
    base: u64,
    /// The 16-byte heap reference of each shower.
    refs: Vec<u8>,
    /// Incident energy of each shower (the file's unit).
    pub energies: Vec<f64>,
    /// Direction (unit vector) of each incident particle.
    pub directions: Vec<[f64; 3]>,
    /// PDG code of each incident particle.
    pub pdg: Vec<i64>,
    /// Identifier of each shower.
    pub shower_ids: Vec<i64>,
    /// Points of each shower.
    pub num_points: Vec<usize>,
    /// Values per point (4: x, y, z, E; 5: and t).
    pub features: usize,
}

/// One global heap collection: object index → its bytes.
type Collection = HashMap<u32, Vec<u8>>;

impl PointFile {
    /// Opens and checks `path`: every dataset present with N rows and the documented shapes,
    /// each shower's sequence holding `num_points × features` values.
    pub fn open(path: &Path) -> Result<Self> {
        let disp = path.display().to_string();
        if !path.exists() {
            return Err(CoreError::data(&disp, "no such file"));
        }
        let bad = |m: String| CoreError::data(&disp, m);
        let file = File::open_streaming(path)
            .map_err(|e| bad(format!("not a readable HDF5 file: {e}")))?;
        let ds = |name: &str| {
            file.dataset(name).map_err(|e| {
                bad(format!(
                    "no readable dataset '{name}' ({e}): not a ShowerData point-cloud file"
                ))
            })
        };
        let shape = ds("shape")?
            .read_i64()
            .map_err(|e| bad(format!("'shape': {e}")))?;
        let [n, _max, features] = shape[..] else {
            return Err(bad(format!("'shape' holds {shape:?}, expected 3 numbers")));
        };
        if n < 0 || !(4..=5).contains(&features) {
            return Err(bad(format!(
                "'shape' is {shape:?}: expected (N, points, 4 or 5)"
            )));
        }
        let n = n as usize;
        let rows = |name: &str, want: usize, v: usize| -> Result<()> {
            if v != want {
                return Err(bad(format!("'{name}' has {v} values, expected {want}")));
            }
            Ok(())
        };
        let showers = ds("showers")?;
        let refs = showers
            .read_raw()
            .map_err(|e| bad(format!("'showers': {e}")))?;
        rows("showers", 16 * n, refs.len())?;
        let ints = |name: &str| -> Result<Vec<i64>> {
            let v = ds(name)?
                .read_i64()
                .map_err(|e| bad(format!("'{name}': {e}")))?;
            rows(name, n, v.len())?;
            Ok(v)
        };
        let floats = |name: &str, per: usize| -> Result<Vec<f64>> {
            let v = ds(name)?
                .read_f64()
                .map_err(|e| bad(format!("'{name}': {e}")))?;
            rows(name, n * per, v.len())?;
            Ok(v)
        };
        let num_points = ints("num_points")?;
        let features = features as usize;
        let mut np = Vec::with_capacity(n);
        for (i, (&k, r)) in num_points.iter().zip(refs.chunks(16)).enumerate() {
            let len = u32::from_le_bytes(r[..4].try_into().expect("4 bytes")) as i64;
            if k < 0 || len != k * features as i64 {
                return Err(bad(format!(
                    "shower {i}: {len} values for {k} points of {features}"
                )));
            }
            np.push(k as usize);
        }
        let directions = floats("directions", 3)?
            .chunks(3)
            .map(|d| [d[0], d[1], d[2]])
            .collect();
        Ok(PointFile {
            path: path.to_path_buf(),
            base: file.superblock().base_address.get(),
            energies: floats("energies", 1)?,
            directions,
            pdg: ints("pdg")?,
            shower_ids: ints("shower_ids")?,
            num_points: np,
            features,
            refs,
        })
    }

    /// Number of showers.
    pub fn len(&self) -> usize {
        self.num_points.len()
    }

    /// Whether the file holds no shower.
    pub fn is_empty(&self) -> bool {
        self.num_points.is_empty()
    }

    /// The points of showers `start..start + count`, each `num_points × features` values.
    pub fn read_points(&self, start: usize, count: usize) -> Result<Vec<Vec<f32>>> {
        let disp = self.path.display().to_string();
        let bad = |m: String| CoreError::data(&disp, m);
        if start + count > self.len() {
            return Err(CoreError::Invalid(format!(
                "showers {start}..{} requested from {disp}, which holds {}",
                start + count,
                self.len()
            )));
        }
        let mut f = std::fs::File::open(&self.path).map_err(|e| bad(e.to_string()))?;
        let mut heaps: HashMap<u64, Collection> = HashMap::new();
        let mut out = Vec::with_capacity(count);
        for i in start..start + count {
            let r = &self.refs[16 * i..16 * (i + 1)];
            let len = u32::from_le_bytes(r[..4].try_into().expect("4 bytes")) as usize;
            let addr = u64::from_le_bytes(r[4..12].try_into().expect("8 bytes"));
            let index = u32::from_le_bytes(r[12..16].try_into().expect("4 bytes"));
            if len == 0 {
                out.push(Vec::new());
                continue;
            }
            let heap = match heaps.entry(addr) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => v.insert(
                    read_collection(&mut f, self.base + addr)
                        .map_err(|m| bad(format!("shower {i}: global heap at {addr}: {m}")))?,
                ),
            };
            let bytes = heap
                .get(&index)
                .ok_or_else(|| bad(format!("shower {i}: no heap object {index} at {addr}")))?;
            if bytes.len() < 4 * len {
                return Err(bad(format!(
                    "shower {i}: heap object of {} bytes for {len} values",
                    bytes.len()
                )));
            }
            out.push(
                bytes[..4 * len]
                    .chunks(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect(),
            );
        }
        Ok(out)
    }
}

/// Reads the global heap collection at file offset `at`: "GCOL", version 1, its size, then
/// objects (index u16, reference count u16, 4 reserved bytes, size u64, data padded to 8
/// bytes) up to the free-space object 0.
fn read_collection(f: &mut std::fs::File, at: u64) -> std::result::Result<Collection, String> {
    let mut head = [0u8; 16];
    f.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
    f.read_exact(&mut head).map_err(|e| e.to_string())?;
    if &head[..4] != b"GCOL" || head[4] != 1 {
        return Err("not a global heap collection".into());
    }
    let size = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    // A collection is at least 4 KiB; bound what a corrupt size may make us allocate.
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if size < 16 || at + size > len {
        return Err(format!("collection size {size} does not fit the file"));
    }
    let mut body = vec![0u8; size as usize - 16];
    f.read_exact(&mut body).map_err(|e| e.to_string())?;
    let mut objects = Collection::new();
    let mut p = 0usize;
    while p + 16 <= body.len() {
        let index = u16::from_le_bytes([body[p], body[p + 1]]) as u32;
        let n = u64::from_le_bytes(body[p + 8..p + 16].try_into().expect("8 bytes")) as usize;
        if index == 0 {
            break;
        }
        let start = p + 16;
        if start + n > body.len() {
            return Err(format!("object {index} overruns the collection"));
        }
        objects.insert(index, body[start..start + n].to_vec());
        p = start + n.div_ceil(8) * 8;
    }
    Ok(objects)
}

/// The ShowerData layout version whose files [`PointWriter`] writes (its root attribute
/// `showerdata_version`, as the Python package stamps it).
pub const SHOWERDATA_VERSION: &str = "0.7.0";

/// One shower to write: its incident particle and its points (`features` values each).
#[derive(Clone, Copy, Debug)]
pub struct PointShower<'a> {
    pub energy: f64,
    pub direction: [f64; 3],
    pub pdg: i64,
    pub id: i64,
    pub points: &'a [f32],
}

/// Writes a ShowerData file shower by shower, memory bounded by one batch: the points go to
/// disk as they are appended (global heap collections of about 1 MiB). The file is written
/// under a temporary name and renamed over the target by [`finish`](Self::finish); nothing
/// is left if the writer is dropped unfinished.
pub struct PointWriter {
    target: PathBuf,
    tmp: TempFile,
    out: H5StreamWriter,
    features: usize,
    max_points: usize,
}

/// Datasets of a written file, in order.
const SHOWERS: usize = 0;
const ENERGIES: usize = 1;
const DIRECTIONS: usize = 2;
const PDG: usize = 3;
const IDS: usize = 4;
const NUM_POINTS: usize = 5;
const SHAPE: usize = 6;

impl PointWriter {
    /// Starts a file of showers with `features` (4: x, y, z, E; 5: and t) values per point;
    /// `expected_rows` chooses the chunking.
    pub fn create(path: &Path, features: usize, expected_rows: usize) -> Result<Self> {
        if !(4..=5).contains(&features) {
            return Err(CoreError::Invalid(format!(
                "{}: points have 4 or 5 values, not {features}",
                path.display()
            )));
        }
        check_writable(path)?;
        let tmp = TempFile::new(path);
        let rows = (expected_rows as u64).clamp(1, crate::io::MAX_CHUNK_ROWS);
        let spec = |name, elem, cols, compress| Spec {
            name,
            elem,
            cols,
            chunk_rows: if name == "shape" { 3 } else { rows },
            compress,
        };
        let mut out = H5StreamWriter::create(
            tmp.path(),
            &[
                spec("showers", Elem::VlenF32, None, false),
                spec("energies", Elem::F32, Some(1), true),
                spec("directions", Elem::F32, Some(3), true),
                spec("pdg", Elem::I32, None, true),
                spec("shower_ids", Elem::I32, None, true),
                spec("num_points", Elem::I32, None, true),
                spec("shape", Elem::I64, None, false),
            ],
            4,
        )
        .map_err(|e| CoreError::write(path.display(), e))?;
        out.attr_str("showerdata_version", SHOWERDATA_VERSION)
            .map_err(|e| CoreError::write(path.display(), e))?;
        Ok(Self {
            target: path.to_path_buf(),
            tmp,
            out,
            features,
            max_points: 0,
        })
    }

    /// Appends showers. Each shower's points must be whole points, its PDG code and id fit 32
    /// bits.
    pub fn append(&mut self, showers: &[PointShower]) -> Result<()> {
        let disp = self.target.display().to_string();
        let mut seqs = Vec::with_capacity(showers.len());
        let (mut en, mut dir, mut pdg, mut ids, mut np) = (
            Vec::with_capacity(showers.len()),
            Vec::with_capacity(3 * showers.len()),
            Vec::with_capacity(showers.len()),
            Vec::with_capacity(showers.len()),
            Vec::with_capacity(showers.len()),
        );
        for s in showers {
            if !s.points.len().is_multiple_of(self.features) {
                return Err(CoreError::Invalid(format!(
                    "writer for {disp}: {} values are not whole points of {}",
                    s.points.len(),
                    self.features
                )));
            }
            let k = s.points.len() / self.features;
            let int = |v: i64, what: &str| {
                i32::try_from(v).map_err(|_| {
                    CoreError::Invalid(format!("writer for {disp}: {what} {v} exceeds int32"))
                })
            };
            pdg.push(int(s.pdg, "PDG code")?);
            ids.push(int(s.id, "shower id")?);
            np.push(int(k as i64, "point count")?);
            self.max_points = self.max_points.max(k);
            seqs.push(s.points);
            en.push(s.energy as f32);
            dir.extend(s.direction.iter().map(|&d| d as f32));
        }
        let out = &mut self.out;
        out.append_vlen_f32(SHOWERS, &seqs)
            .and_then(|_| out.append_f32(ENERGIES, &en))
            .and_then(|_| out.append_f32(DIRECTIONS, &dir))
            .and_then(|_| out.append_i32(PDG, &pdg))
            .and_then(|_| out.append_i32(IDS, &ids))
            .and_then(|_| out.append_i32(NUM_POINTS, &np))
            .map_err(|e| CoreError::write(&disp, e))
    }

    /// Showers appended so far.
    pub fn len(&self) -> usize {
        self.out.rows(SHOWERS) as usize
    }

    /// Whether no shower was appended yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Completes the file (its `shape` is (N, most points, features)), renames it over the
    /// target and returns the number of showers.
    pub fn finish(mut self) -> Result<usize> {
        let n = self.len();
        if n == 0 {
            return Err(CoreError::Invalid(format!(
                "no showers to write to {}",
                self.target.display()
            )));
        }
        let shape = [n as i64, self.max_points as i64, self.features as i64];
        let disp = self.target.display().to_string();
        self.out
            .append_i64(SHAPE, &shape)
            .and_then(|_| self.out.finish())
            .map_err(|e| CoreError::write(&disp, e))?;
        self.tmp.persist()?;
        Ok(n)
    }
}

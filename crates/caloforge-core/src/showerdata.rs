//! Point-cloud showers in the ShowerData layout (the `showerdata` Python package, 0.7, of
//! FLC-QU-hep/ShowerData, used by AllShowers): datasets
//! - `showers` (N,): one variable-length float32 sequence per shower, its points flattened
//!   (x, y, z, E[, t] each),
//! - `num_points` (N,) int32, `energies` (N, 1) float32, `directions` (N, 3) float32 (unit
//!   vectors), `pdg` (N,) int32, `shower_ids` (N,) int32,
//! - `shape` (3,) int: (N, most points in a shower, values per point).
//!
//! Reading only, for now. The variable-length sequences are HDF5 global-heap objects: the
//! dataset holds a 16-byte reference per shower (sequence length u32, heap collection address
//! u64, object index u32), which this module resolves by reading the collections ("GCOL") from
//! the file, only those the requested showers need.

use crate::error::{CoreError, Result};
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

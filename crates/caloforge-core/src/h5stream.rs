//! A streaming HDF5 writer for row-chunked, compressed 2-D datasets: memory bounded by one batch
//! of rows, whatever the file's size.
//!
//! hdf5-pure (the workspace's HDF5 crate) assembles a file from whole datasets held in memory,
//! and appends in place to rank-1 datasets only; a CaloChallenge file of 100 000 dataset-3
//! showers is 16 GB of float32. This writer puts each chunk on disk as soon as its rows are
//! complete (shuffle + deflate, compressed in parallel), keeps only the chunks' addresses, and at
//! [`finish`](H5StreamWriter::finish) writes the chunk indexes and object headers after the data,
//! then the superblock at offset 0.
//!
//! The file format is the HDF5 1.8 one (`libver = "v108"`), the subset libhdf5, h5py and
//! hdf5-pure all read: superblock version 2, version-2 object headers, a root group with compact
//! links, and per dataset a dataspace, an IEEE float datatype, a fill-value message, a
//! shuffle + deflate filter pipeline and a version-3 chunked layout indexed by a version-1 B-tree
//! (its nodes sized for the default `K = 32`, as libhdf5 reads them).

use rayon::prelude::*;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

/// "Undefined address" in HDF5.
const UNDEF: u64 = u64::MAX;
/// Entries per chunk B-tree node: 2K with libhdf5's default K = 32 for chunk indexes.
const BTREE_FANOUT: usize = 64;

/// Element type of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F64,
    I32,
    I64,
    /// A variable-length sequence of float32 per element: a 16-byte reference (length, global
    /// heap collection address, object index) in the dataset, the values in the global heap.
    VlenF32,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::F32 | Elem::I32 => 4,
            Elem::F64 | Elem::I64 => 8,
            Elem::VlenF32 => 16,
        }
    }

    /// The datatype message body.
    fn datatype(self) -> Vec<u8> {
        match self {
            Elem::F32 | Elem::F64 => {
                let size = self.size();
                let (sign, exp_loc, exp_size, mant_size, bias): (u8, u8, u8, u8, u32) =
                    if self == Elem::F32 {
                        (31, 23, 8, 23, 127)
                    } else {
                        (63, 52, 11, 52, 1023)
                    };
                // Version 1, class floating point, little-endian IEEE.
                let mut t = vec![0x11, 0x20, sign, 0];
                t.extend_from_slice(&(size as u32).to_le_bytes());
                t.extend_from_slice(&0u16.to_le_bytes()); // bit offset
                t.extend_from_slice(&((size * 8) as u16).to_le_bytes()); // precision
                t.extend_from_slice(&[exp_loc, exp_size, 0, mant_size]);
                t.extend_from_slice(&bias.to_le_bytes());
                t
            }
            Elem::I32 | Elem::I64 => integer_type(self.size(), true),
            Elem::VlenF32 => {
                // Version 1, class variable-length, a sequence of float32.
                let mut t = vec![0x19, 0, 0, 0];
                t.extend_from_slice(&16u32.to_le_bytes());
                t.extend_from_slice(&Elem::F32.datatype());
                t
            }
        }
    }
}

/// An integer datatype message body: version 1, little-endian, `size` bytes.
fn integer_type(size: usize, signed: bool) -> Vec<u8> {
    let mut t = vec![0x10, if signed { 0x08 } else { 0 }, 0, 0];
    t.extend_from_slice(&(size as u32).to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes());
    t.extend_from_slice(&((size * 8) as u16).to_le_bytes());
    t
}

/// One dataset of a file to stream: its rows are appended in order and stored in chunks of
/// `chunk_rows` rows; rank 1 when `cols` is `None`, else rank 2.
#[derive(Clone, Copy, Debug)]
pub struct Spec<'a> {
    pub name: &'a str,
    pub elem: Elem,
    pub cols: Option<u64>,
    pub chunk_rows: u64,
    /// Shuffle + deflate the chunks (never for variable-length references).
    pub compress: bool,
}

/// Largest global heap collection the writer makes unless one sequence needs more.
const HEAP_COLLECTION_BYTES: usize = 1 << 20;

/// A dataset of a streamed file (see [`Spec`]).
struct Stream {
    name: String,
    ty: Elem,
    cols: Option<u64>,
    chunk_rows: u64,
    level: Option<u32>,
    rows: u64,
    /// Raw little-endian bytes of the rows not yet in a written chunk.
    pending: Vec<u8>,
    /// (address, stored size) of each written chunk, in row order.
    chunks: Vec<(u64, u32)>,
}

impl Stream {
    fn row_values(&self) -> usize {
        self.cols.unwrap_or(1) as usize
    }

    fn chunk_bytes(&self) -> usize {
        self.chunk_rows as usize * self.row_values() * self.ty.size()
    }
}

/// Writes an HDF5 file of datasets row by row (see the module documentation).
/// Errors are plain strings: the caller names the file.
pub struct H5StreamWriter {
    out: BufWriter<File>,
    pos: u64,
    datasets: Vec<Stream>,
    /// Attributes of the root group: (name, UTF-8 value in a global heap object).
    attrs: Vec<(String, u32, u64, u32)>,
}

impl H5StreamWriter {
    /// Creates (truncates) the file at `path` with the given datasets. Compressed datasets are
    /// shuffled and deflated at `level`.
    pub fn create(path: &Path, datasets: &[Spec], level: u32) -> Result<Self, String> {
        let f = File::create(path).map_err(|e| e.to_string())?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        // The superblock is written last, at offset 0; reserve its 48 bytes.
        out.write_all(&[0u8; 48]).map_err(|e| e.to_string())?;
        let datasets = datasets
            .iter()
            .map(|d| Stream {
                name: d.name.to_string(),
                ty: d.elem,
                cols: d.cols.map(|c| c.max(1)),
                chunk_rows: d.chunk_rows.max(1),
                level: (d.compress && d.elem != Elem::VlenF32).then_some(level),
                rows: 0,
                pending: Vec::new(),
                chunks: Vec::new(),
            })
            .collect();
        Ok(Self {
            out,
            pos: 48,
            datasets,
            attrs: Vec::new(),
        })
    }

    /// Adds a string attribute to the root group (a variable-length UTF-8 string, as h5py
    /// writes a Python `str`).
    pub fn attr_str(&mut self, name: &str, value: &str) -> Result<(), String> {
        let addr = self.write_collection(&[value.as_bytes()])?;
        self.attrs
            .push((name.to_string(), value.len() as u32, addr, 1));
        Ok(())
    }

    /// Appends variable-length float32 sequences (one per row) to dataset `k`: their values go
    /// to global heap collections of about 1 MiB, their references to the dataset.
    pub fn append_vlen_f32(&mut self, k: usize, seqs: &[&[f32]]) -> Result<(), String> {
        if self.datasets[k].ty != Elem::VlenF32 {
            return Err(format!(
                "{}: not a variable-length dataset",
                self.datasets[k].name
            ));
        }
        let mut refs = Vec::with_capacity(16 * seqs.len());
        let mut start = 0;
        while start < seqs.len() {
            // Fill one collection: at least one sequence, at most 65535 objects.
            let (mut end, mut bytes) = (start, 0usize);
            while end < seqs.len() && end - start < 65535 {
                let b = 16 + (4 * seqs[end].len()).div_ceil(8) * 8;
                if end > start && bytes + b > HEAP_COLLECTION_BYTES {
                    break;
                }
                bytes += b;
                end += 1;
            }
            let objects: Vec<Vec<u8>> = seqs[start..end]
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.iter().flat_map(|v| v.to_le_bytes()).collect())
                .collect();
            let views: Vec<&[u8]> = objects.iter().map(Vec::as_slice).collect();
            let addr = if views.is_empty() {
                0
            } else {
                self.write_collection(&views)?
            };
            let mut index = 0u32;
            for s in &seqs[start..end] {
                let (a, i) = if s.is_empty() {
                    (0, 0)
                } else {
                    index += 1;
                    (addr, index)
                };
                let len = u32::try_from(s.len()).map_err(|_| "sequence above 2^32 values")?;
                refs.extend_from_slice(&len.to_le_bytes());
                refs.extend_from_slice(&a.to_le_bytes());
                refs.extend_from_slice(&i.to_le_bytes());
            }
            start = end;
        }
        self.append_bytes(k, &refs)
    }

    /// Writes a global heap collection holding `objects` (indices 1, 2, …) and returns its
    /// address. A collection is at least 4 KiB; what the objects leave is free-space object 0.
    fn write_collection(&mut self, objects: &[&[u8]]) -> Result<u64, String> {
        let used: usize = 16
            + objects
                .iter()
                .map(|o| 16 + o.len().div_ceil(8) * 8)
                .sum::<usize>();
        let mut size = used.max(4096);
        if size > used && size - used < 16 {
            size += 16; // room for the free-space object's header
        }
        let mut c = Vec::with_capacity(size);
        c.extend_from_slice(b"GCOL");
        c.extend_from_slice(&[1, 0, 0, 0]);
        c.extend_from_slice(&(size as u64).to_le_bytes());
        for (i, o) in objects.iter().enumerate() {
            c.extend_from_slice(&(i as u16 + 1).to_le_bytes());
            c.extend_from_slice(&1u16.to_le_bytes()); // reference count
            c.extend_from_slice(&[0; 4]);
            c.extend_from_slice(&(o.len() as u64).to_le_bytes());
            c.extend_from_slice(o);
            c.resize(c.len().div_ceil(8) * 8, 0);
        }
        if size > used {
            // Free space: object 0, its size counting its own header.
            c.extend_from_slice(&[0; 8]);
            c.extend_from_slice(&((size - used) as u64).to_le_bytes());
        }
        c.resize(size, 0);
        let addr = self.pos;
        self.write(&c)?;
        Ok(addr)
    }

    /// Appends rows to dataset `k` as little-endian bytes (a whole number of rows); complete
    /// chunks are compressed (in parallel) and written.
    pub fn append_bytes(&mut self, k: usize, bytes: &[u8]) -> Result<(), String> {
        let ds = &mut self.datasets[k];
        let row_bytes = ds.row_values() * ds.ty.size();
        if !bytes.len().is_multiple_of(row_bytes) {
            return Err(format!(
                "{}: {} bytes is not a whole number of rows of {} values",
                ds.name,
                bytes.len(),
                ds.row_values()
            ));
        }
        ds.rows += (bytes.len() / row_bytes) as u64;
        ds.pending.extend_from_slice(bytes);
        let cb = ds.chunk_bytes();
        let full = ds.pending.len() / cb;
        if full == 0 {
            return Ok(());
        }
        let (level, size) = (ds.level, ds.ty.size());
        let encoded: Vec<Vec<u8>> = ds.pending[..full * cb]
            .par_chunks(cb)
            .map(|c| encode_chunk(c, size, level))
            .collect();
        ds.pending.drain(..full * cb);
        for c in encoded {
            self.put_chunk(k, &c)?;
        }
        Ok(())
    }

    /// Appends rows of float32 values to dataset `k`.
    pub fn append_f32(&mut self, k: usize, values: &[f32]) -> Result<(), String> {
        self.append_values(k, values, |v, out| out.extend_from_slice(&v.to_le_bytes()))
    }

    /// Appends rows of float64 values to dataset `k`.
    pub fn append_f64(&mut self, k: usize, values: &[f64]) -> Result<(), String> {
        self.append_values(k, values, |v, out| out.extend_from_slice(&v.to_le_bytes()))
    }

    /// Appends rows of int32 values to dataset `k`.
    pub fn append_i32(&mut self, k: usize, values: &[i32]) -> Result<(), String> {
        self.append_values(k, values, |v, out| out.extend_from_slice(&v.to_le_bytes()))
    }

    /// Appends rows of int64 values to dataset `k`.
    pub fn append_i64(&mut self, k: usize, values: &[i64]) -> Result<(), String> {
        self.append_values(k, values, |v, out| out.extend_from_slice(&v.to_le_bytes()))
    }

    /// Appends `values` (whole rows) in slices of about 16 MB, so that a large batch is not
    /// copied whole into bytes.
    fn append_values<T: Copy>(
        &mut self,
        k: usize,
        values: &[T],
        le: impl Fn(T, &mut Vec<u8>),
    ) -> Result<(), String> {
        let ds = &self.datasets[k];
        if ds.ty.size() != std::mem::size_of::<T>() || ds.ty == Elem::VlenF32 {
            return Err(format!("{}: values of the wrong type", ds.name));
        }
        let cols = ds.row_values();
        if !values.len().is_multiple_of(cols) {
            return Err(format!(
                "{}: {} values is not a whole number of rows of {cols}",
                self.datasets[k].name,
                values.len()
            ));
        }
        let rows_per_slice = ((16usize << 20) / (cols * std::mem::size_of::<T>())).max(1);
        let mut bytes = Vec::new();
        for rows in values.chunks(rows_per_slice * cols) {
            bytes.clear();
            for &v in rows {
                le(v, &mut bytes);
            }
            self.append_bytes(k, &bytes)?;
        }
        Ok(())
    }

    /// Rows appended so far to dataset `k`.
    pub fn rows(&self, k: usize) -> u64 {
        self.datasets[k].rows
    }

    fn put_chunk(&mut self, k: usize, bytes: &[u8]) -> Result<(), String> {
        let size = u32::try_from(bytes.len()).map_err(|_| "chunk above 4 GiB".to_string())?;
        self.datasets[k].chunks.push((self.pos, size));
        self.write(bytes)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.out.write_all(bytes).map_err(|e| e.to_string())?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes the last partial chunks, the indexes, the object headers and the superblock, and
    /// syncs the file to disk.
    pub fn finish(mut self) -> Result<(), String> {
        for k in 0..self.datasets.len() {
            let ds = &mut self.datasets[k];
            if ds.pending.is_empty() {
                continue;
            }
            // Edge chunks are stored at full size, the rows past the end zero.
            let mut last = std::mem::take(&mut ds.pending);
            last.resize(ds.chunk_bytes(), 0);
            let c = encode_chunk(&last, ds.ty.size(), ds.level);
            self.put_chunk(k, &c)?;
        }
        let mut headers = Vec::new();
        for k in 0..self.datasets.len() {
            let btree = self.write_btree(k)?;
            let header = object_header(&dataset_messages(&self.datasets[k], btree));
            headers.push(self.pos);
            self.write(&header)?;
        }
        let mut root = vec![
            message(0x02, &link_info()),
            message(0x0A, &[0, 0]), // group info: version 0, no flags
        ];
        for (name, len, addr, index) in &self.attrs {
            root.push(message(0x0C, &string_attribute(name, *len, *addr, *index)));
        }
        for (ds, &addr) in self.datasets.iter().zip(&headers) {
            root.push(message(0x06, &link(&ds.name, addr)));
        }
        let root_addr = self.pos;
        let root_header = object_header(&root);
        self.write(&root_header)?;
        let eof = self.pos;
        let mut sb = Vec::with_capacity(48);
        sb.extend_from_slice(b"\x89HDF\r\n\x1a\n");
        sb.extend_from_slice(&[2, 8, 8, 0]); // version 2, 8-byte offsets and lengths, no flags
        sb.extend_from_slice(&0u64.to_le_bytes()); // base address
        sb.extend_from_slice(&UNDEF.to_le_bytes()); // no superblock extension
        sb.extend_from_slice(&eof.to_le_bytes());
        sb.extend_from_slice(&root_addr.to_le_bytes());
        let sum = lookup3(&sb, 0);
        sb.extend_from_slice(&sum.to_le_bytes());
        self.out.flush().map_err(|e| e.to_string())?;
        let mut f = self.out.into_inner().map_err(|e| e.to_string())?;
        f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        f.write_all(&sb).map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())
    }

    /// Writes dataset `k`'s version-1 chunk B-tree (leaves first, then each level above) and
    /// returns the root's address.
    fn write_btree(&mut self, k: usize) -> Result<u64, String> {
        let ds = &self.datasets[k];
        // Rows[, columns], and the element-size dimension of chunk keys.
        let ndims = if ds.cols.is_some() { 3 } else { 2 };
        let key_size = 8 + 8 * ndims;
        let node_size = 24 + BTREE_FANOUT * 8 + (BTREE_FANOUT + 1) * key_size;
        // A key: chunk size, filter mask, element offsets (row, column, 0).
        let key = |size: u32, row: u64| {
            let mut b = Vec::with_capacity(key_size);
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&row.to_le_bytes());
            for _ in 1..ndims {
                b.extend_from_slice(&0u64.to_le_bytes());
            }
            b
        };
        // Children of the current level: (address, first row, chunk size of the first chunk).
        let mut level: Vec<(u64, u64, u32)> = ds
            .chunks
            .iter()
            .enumerate()
            .map(|(i, &(addr, size))| (addr, i as u64 * ds.chunk_rows, size))
            .collect();
        let end_row = ds.chunks.len() as u64 * ds.chunk_rows;
        let last_size = ds.chunks.last().map_or(0, |c| c.1);
        let mut depth = 0u8;
        loop {
            let groups: Vec<&[(u64, u64, u32)]> = level.chunks(BTREE_FANOUT).collect();
            let first = self.pos;
            let mut nodes = Vec::with_capacity(groups.len() * node_size);
            let mut parents = Vec::with_capacity(groups.len());
            for (g, children) in groups.iter().enumerate() {
                let addr = first + (g * node_size) as u64;
                let mut n = Vec::with_capacity(node_size);
                n.extend_from_slice(b"TREE");
                n.push(1); // raw data chunks
                n.push(depth);
                n.extend_from_slice(&(children.len() as u16).to_le_bytes());
                let left = if g == 0 {
                    UNDEF
                } else {
                    addr - node_size as u64
                };
                let right = if g + 1 == groups.len() {
                    UNDEF
                } else {
                    addr + node_size as u64
                };
                n.extend_from_slice(&left.to_le_bytes());
                n.extend_from_slice(&right.to_le_bytes());
                for &(child, row, size) in children.iter() {
                    n.extend_from_slice(&key(size, row));
                    n.extend_from_slice(&child.to_le_bytes());
                }
                // The right key: where the next node's first chunk starts.
                let next_row = groups.get(g + 1).map_or(end_row, |c| c[0].1);
                n.extend_from_slice(&key(last_size, next_row));
                n.resize(node_size, 0);
                nodes.extend_from_slice(&n);
                parents.push((addr, children[0].1, children[0].2));
            }
            self.write(&nodes)?;
            if parents.len() == 1 {
                return Ok(parents[0].0);
            }
            level = parents;
            depth += 1;
        }
    }
}

/// Shuffles (byte planes, as the HDF5 shuffle filter) and zlib-compresses one chunk; without a
/// level, the chunk as it is.
fn encode_chunk(raw: &[u8], elem: usize, level: Option<u32>) -> Vec<u8> {
    let Some(level) = level else {
        return raw.to_vec();
    };
    let n = raw.len() / elem;
    let mut shuffled = vec![0u8; raw.len()];
    for (i, e) in raw.chunks_exact(elem).enumerate() {
        for (b, &byte) in e.iter().enumerate() {
            shuffled[b * n + i] = byte;
        }
    }
    let mut z = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(raw.len() / 4),
        flate2::Compression::new(level),
    );
    z.write_all(&shuffled).expect("writing to memory");
    z.finish().expect("writing to memory")
}

/// A header message: type, size, flags (0), body.
fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(body.len() as u16).to_le_bytes());
    m.push(0);
    m.extend_from_slice(body);
    m
}

/// A version-2 object header holding `messages`, with its checksum.
fn object_header(messages: &[Vec<u8>]) -> Vec<u8> {
    let body: usize = messages.iter().map(Vec::len).sum();
    let mut h = Vec::with_capacity(body + 16);
    h.extend_from_slice(b"OHDR");
    h.push(2); // version
    h.push(0x02); // the size of chunk 0 is stored in 4 bytes; no times, no attribute phases
    h.extend_from_slice(&(body as u32).to_le_bytes());
    for m in messages {
        h.extend_from_slice(m);
    }
    let sum = lookup3(&h, 0);
    h.extend_from_slice(&sum.to_le_bytes());
    h
}

/// Link Info message of a group whose links are stored compactly in its header.
fn link_info() -> Vec<u8> {
    let mut b = vec![0, 0]; // version 0, no creation order
    b.extend_from_slice(&UNDEF.to_le_bytes()); // no fractal heap
    b.extend_from_slice(&UNDEF.to_le_bytes()); // no name index
    b
}

/// A hard link named `name` to the object header at `addr`.
fn link(name: &str, addr: u64) -> Vec<u8> {
    let mut b = vec![1, 0, name.len() as u8]; // version 1, 1-byte name length, hard link
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&addr.to_le_bytes());
    b
}

/// The messages of a streamed dataset whose chunk B-tree is at `btree`.
fn dataset_messages(ds: &Stream, btree: u64) -> Vec<Vec<u8>> {
    let size = ds.ty.size();
    // Dataspace, version 2: rank 1 or 2, no maximum dimensions, simple.
    let rank = if ds.cols.is_some() { 2u8 } else { 1 };
    let mut space = vec![2, rank, 0, 1];
    space.extend_from_slice(&ds.rows.to_le_bytes());
    if let Some(c) = ds.cols {
        space.extend_from_slice(&c.to_le_bytes());
    }
    // Fill value, version 3: allocation incremental, fill written if set, no value set.
    let fill = vec![3, 0x0B];
    // Layout, version 3: chunked, rank + 1 dimensions, B-tree address, chunk dimensions.
    let mut layout = vec![3, 2, rank + 1];
    layout.extend_from_slice(&btree.to_le_bytes());
    layout.extend_from_slice(&(ds.chunk_rows as u32).to_le_bytes());
    if let Some(c) = ds.cols {
        layout.extend_from_slice(&(c as u32).to_le_bytes());
    }
    layout.extend_from_slice(&(size as u32).to_le_bytes());
    let mut messages = vec![
        message(0x01, &space),
        message(0x03, &ds.ty.datatype()),
        message(0x05, &fill),
    ];
    if let Some(level) = ds.level {
        // Filter pipeline, version 2: shuffle (element size), then deflate (level).
        let mut filters = vec![2, 2];
        for (id, cd) in [(2u16, size as u32), (1u16, level)] {
            filters.extend_from_slice(&id.to_le_bytes());
            filters.extend_from_slice(&0u16.to_le_bytes()); // flags
            filters.extend_from_slice(&1u16.to_le_bytes()); // one client value
            filters.extend_from_slice(&cd.to_le_bytes());
        }
        messages.push(message(0x0B, &filters));
    }
    messages.push(message(0x08, &layout));
    messages
}

/// An attribute message (version 1, as h5py writes a `str` attribute): a scalar variable-length
/// UTF-8 string of `len` bytes in global heap object `index` of the collection at `addr`.
fn string_attribute(name: &str, len: u32, addr: u64, index: u32) -> Vec<u8> {
    let pad8 = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(8) * 8, 0);
    // Variable-length string (class 9, type 1, UTF-8) of one-byte unsigned characters.
    let mut dtype = vec![0x19, 0x01, 0x01, 0];
    dtype.extend_from_slice(&16u32.to_le_bytes());
    dtype.extend_from_slice(&integer_type(1, false));
    let space = [1u8, 0, 0, 0, 0, 0, 0, 0]; // version 1, rank 0: scalar
    let mut b = vec![1, 0];
    b.extend_from_slice(&(name.len() as u16 + 1).to_le_bytes());
    b.extend_from_slice(&(dtype.len() as u16).to_le_bytes());
    b.extend_from_slice(&(space.len() as u16).to_le_bytes());
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    pad8(&mut b);
    b.extend_from_slice(&dtype);
    pad8(&mut b);
    b.extend_from_slice(&space);
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&addr.to_le_bytes());
    b.extend_from_slice(&index.to_le_bytes());
    b
}

/// Bob Jenkins' lookup3 `hashlittle`, the checksum of HDF5 metadata.
pub fn lookup3(data: &[u8], initval: u32) -> u32 {
    let mut a = 0xdead_beefu32
        .wrapping_add(data.len() as u32)
        .wrapping_add(initval);
    let (mut b, mut c) = (a, a);
    let word = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let mut k = data;
    while k.len() > 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        // mix
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(4);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(6);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(8);
        b = b.wrapping_add(a);
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(16);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(19);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(4);
        b = b.wrapping_add(a);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    let mut tail = [0u8; 12];
    tail[..k.len()].copy_from_slice(k);
    a = a.wrapping_add(word(&tail[0..4]));
    b = b.wrapping_add(word(&tail[4..8]));
    c = c.wrapping_add(word(&tail[8..12]));
    // final
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup3_matches_the_reference_vectors() {
        // From Bob Jenkins' lookup3.c driver5().
        assert_eq!(lookup3(b"", 0), 0xdead_beef);
        assert_eq!(lookup3(b"Four score and seven years ago", 0), 0x1777_0551);
        assert_eq!(lookup3(b"Four score and seven years ago", 1), 0xcd62_8161);
    }

    fn roundtrip(rows: usize, cols: usize, chunk_rows: u64, batch: usize) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.h5");
        let vals: Vec<f32> = (0..rows * cols)
            .map(|i| {
                if i % 3 == 0 {
                    0.0
                } else {
                    (i as f32).sqrt() * 0.37
                }
            })
            .collect();
        let energies: Vec<f64> = (0..rows).map(|i| 1000.0 + i as f64 * 0.5).collect();
        let mut w = H5StreamWriter::create(
            &p,
            &[
                Spec {
                    name: "incident_energies",
                    elem: Elem::F64,
                    cols: Some(1),
                    chunk_rows: 7,
                    compress: true,
                },
                Spec {
                    name: "showers",
                    elem: Elem::F32,
                    cols: Some(cols as u64),
                    chunk_rows,
                    compress: true,
                },
            ],
            4,
        )
        .unwrap();
        for s in (0..rows).step_by(batch) {
            let e = (s + batch).min(rows);
            w.append_f64(0, &energies[s..e]).unwrap();
            w.append_f32(1, &vals[s * cols..e * cols]).unwrap();
        }
        w.finish().unwrap();
        let f = hdf5_pure::File::open(&p).unwrap();
        let ds = f.dataset("showers").unwrap();
        assert_eq!(ds.shape().unwrap(), vec![rows as u64, cols as u64]);
        assert_eq!(ds.read_f32().unwrap(), vals);
        let en = f.dataset("incident_energies").unwrap();
        assert_eq!(en.shape().unwrap(), vec![rows as u64, 1]);
        assert_eq!(en.read_f64().unwrap(), energies);
    }

    #[test]
    fn small_files_read_back() {
        roundtrip(1, 5, 4, 1); // one partial chunk
        roundtrip(10, 3, 5, 3); // whole chunks, batches across chunk edges
        roundtrip(23, 4, 5, 10); // a partial last chunk
    }

    #[test]
    fn deep_chunk_btrees_read_back() {
        // 5000 one-row chunks: a B-tree of three levels (64 × 64 < 5000).
        roundtrip(5000, 2, 1, 333);
    }
}

//! A reader for GGUF v2/v3 files (llama.cpp's model format): header, metadata, tensor table,
//! memory-mapped tensor data. Dequantisation lives in `dequant.rs`.
//!
//! Layout (all little-endian): magic "GGUF", u32 version, u64 tensor count, u64 metadata count,
//! metadata key/value pairs, tensor infos (name, n_dims, dims (fastest first), type, offset),
//! then tensor data at `general.alignment` (default 32) aligned offsets.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

use super::ggml_quant::{dequantize, GgmlType};
use super::host_tensor::HostTensor;

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) if v >= 0 => Some(v as u64),
            GgufValue::I16(v) if v >= 0 => Some(v as u64),
            GgufValue::I32(v) if v >= 0 => Some(v as u64),
            GgufValue::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
    fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F32(_) => "f32",
            GgufValue::F64(_) => "f64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions as GGUF stores them: fastest-varying first (ggml's `ne`).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Row-major shape (slowest first), i.e. the reverse of `dims`: a ggml [in, out] matrix is
    /// [out, in] here, the Hugging Face / PyTorch layout.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
    /// The element count (checked at open not to overflow; see `checked_elements`).
    pub fn num_elements(&self) -> u64 {
        self.checked_elements().unwrap_or(u64::MAX)
    }
    /// The product of the dimensions, None where it overflows.
    fn checked_elements(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }
    /// The tensor's bytes in the data section.
    pub fn n_bytes(&self) -> Option<u64> {
        self.ggml_type.bytes_for(self.checked_elements()?)
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    data_start: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Every tensor's byte range, in checked arithmetic: its element count and byte size do not
/// overflow and fill whole blocks of its type, its offset is aligned, the range lies inside the
/// data section, no two ranges overlap and no name repeats. The error names the tensor.
fn check_tensor_ranges(
    tensors: &[GgufTensorInfo],
    data_start: u64,
    file_len: u64,
    alignment: u64,
) -> Result<()> {
    let data_len = file_len - data_start;
    let mut ranges: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
    for t in tensors {
        let elements = t.checked_elements().with_context(|| {
            format!(
                "corrupt tensor table: tensor {} has dimensions {:?} whose product overflows",
                t.name, t.dims
            )
        })?;
        let n_bytes = t.ggml_type.bytes_for(elements).with_context(|| {
            format!(
                "tensor {}: {elements} elements do not fill whole {} blocks",
                t.name,
                t.ggml_type.name()
            )
        })?;
        if t.offset % alignment != 0 {
            bail!(
                "corrupt tensor table: tensor {} starts at offset {}, not a multiple of the \
                 alignment {alignment}",
                t.name,
                t.offset
            );
        }
        let Some(end) = t.offset.checked_add(n_bytes) else {
            bail!(
                "corrupt tensor table: tensor {} ({n_bytes} bytes at offset {}) does not lie \
                 inside the data section (the end overflows)",
                t.name,
                t.offset
            );
        };
        if end > data_len {
            bail!(
                "truncated file: tensor {} ({n_bytes} bytes at offset {} of the data section) \
                 needs bytes up to {} but the file has {file_len} bytes",
                t.name,
                t.offset,
                u128::from(data_start) + u128::from(end)
            );
        }
        ranges.push((t.offset, end, &t.name));
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        let ((_, end_a, a), (start_b, _, b)) = (pair[0], pair[1]);
        if start_b < end_a {
            bail!("corrupt tensor table: tensors {a} and {b} overlap in the data section");
        }
    }
    let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|p| p[0] == p[1]) {
        bail!("corrupt tensor table: two tensors are named {}", pair[0]);
    }
    Ok(())
}

/// A bounds-checked little-endian cursor over the file bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Metadata array elements read so far (bounded by MAX_METADATA_ELEMENTS).
    elements: u64,
}

/// The most metadata array elements a header may hold in all: a 262k-token vocabulary with
/// its scores, types and merges is ~1.3 M.
const MAX_METADATA_ELEMENTS: u64 = 1 << 24;

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => bail!(
                "truncated header: reading {what} ({n} bytes) at byte {} but the file has {} bytes",
                self.pos,
                self.bytes.len()
            ),
        }
    }
    /// The next N bytes as an array (take returns exactly N bytes or an error).
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let bytes = self.take(N, what)?;
        bytes
            .try_into()
            .with_context(|| format!("reading {what}: expected {N} bytes"))
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array::<2>(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array::<4>(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array::<8>(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.bytes.len())
            .with_context(|| format!("corrupt header: {what} claims a length of {len} bytes"))?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec())
            .with_context(|| format!("corrupt header: {what} is not valid UTF-8"))
    }

    fn value(&mut self, value_type: u32, what: &str, depth: usize) -> Result<GgufValue> {
        Ok(match value_type {
            0 => GgufValue::U8(self.u8(what)?),
            1 => GgufValue::I8(self.u8(what)? as i8),
            2 => GgufValue::U16(self.u16(what)?),
            3 => GgufValue::I16(self.u16(what)? as i16),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(self.u32(what)? as i32),
            6 => GgufValue::F32(f32::from_bits(self.u32(what)?)),
            7 => GgufValue::Bool(self.u8(what)? != 0),
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth > 4 {
                    bail!("corrupt header: {what} nests arrays more than 4 deep");
                }
                let item_type = self.u32(what)?;
                let count = self.u64(what)?;
                // Every element takes at least one byte: a count beyond the remaining bytes is
                // corrupt. The header's arrays together are bounded too (each element is a
                // 32-byte value in memory), and capacity is reserved only for what was read.
                let remaining = self.bytes.len().saturating_sub(self.pos) as u64;
                if count > remaining {
                    bail!("corrupt header: {what} claims {count} array elements");
                }
                self.elements = self.elements.saturating_add(count);
                if self.elements > MAX_METADATA_ELEMENTS {
                    bail!(
                        "corrupt header: the metadata arrays hold more than {MAX_METADATA_ELEMENTS} \
                         elements in all (at {what})"
                    );
                }
                let mut items = Vec::with_capacity((count as usize).min(4096));
                for _ in 0..count {
                    items.push(self.value(item_type, what, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(self.u64(what)? as i64),
            12 => GgufValue::F64(f64::from_bits(self.u64(what)?)),
            other => bail!("corrupt header: {what} has unknown value type {other}"),
        })
    }
}

impl GgufFile {
    /// Open and parse the header and tensor table; tensor data stays memory-mapped.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_inner(path).with_context(|| format!("reading GGUF file {}", path.display()))
    }

    fn open_inner(path: &Path) -> Result<Self> {
        let file = File::open(path).context("cannot open file")?;
        // SAFETY: the file is opened read-only; a concurrent truncation by another process is
        // outside our control, as for every mmap-based model loader.
        let mmap = unsafe { Mmap::map(&file) }.context("cannot memory-map file")?;
        let mut cur = Cursor {
            bytes: &mmap,
            pos: 0,
            elements: 0,
        };
        let magic = cur.take(4, "magic")?;
        if magic != GGUF_MAGIC {
            bail!(
                "not a GGUF file: the first bytes are {:?}, expected \"GGUF\"",
                magic
            );
        }
        let version = cur.u32("version")?;
        if !(2..=3).contains(&version) {
            bail!("unsupported GGUF version {version} (supported: 2 and 3)");
        }
        let n_tensors = cur.u64("tensor count")?;
        let n_kv = cur.u64("metadata count")?;
        if n_tensors > 1 << 24 || n_kv > 1 << 24 {
            bail!(
                "corrupt header: {n_tensors} tensors and {n_kv} metadata entries are implausible"
            );
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = cur.string(&format!("metadata key #{i}"))?;
            let vtype = cur.u32(&format!("type of metadata {key}"))?;
            let value = cur.value(vtype, &format!("metadata {key}"), 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = cur.string(&format!("name of tensor #{i}"))?;
            let n_dims = cur.u32(&format!("rank of tensor {name}"))?;
            if n_dims == 0 || n_dims > 4 {
                bail!("corrupt tensor table: tensor {name} has rank {n_dims} (expected 1 to 4)");
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(cur.u64(&format!("dimensions of tensor {name}"))?);
            }
            let type_id = cur.u32(&format!("type of tensor {name}"))?;
            let ggml_type = GgmlType::from_id(type_id)
                .with_context(|| format!("tensor {name} has unknown ggml type id {type_id}"))?;
            let offset = cur.u64(&format!("offset of tensor {name}"))?;
            tensors.push(GgufTensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .with_context(|| format!("general.alignment must be a power of two, got {v:?}"))?,
        };
        let file_len = mmap.len() as u64;
        let data_start = (cur.pos as u64)
            .div_ceil(alignment)
            .checked_mul(alignment)
            .filter(|&d| d <= file_len)
            .with_context(|| {
                format!("corrupt header: the data section (alignment {alignment}) starts beyond the file")
            })?;
        check_tensor_ranges(&tensors, data_start, file_len, alignment)?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            version,
            metadata,
            tensors,
            data_start,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.metadata
            .get(key)
            .with_context(|| format!("{}: missing metadata key {key}", self.path.display()))
    }

    pub fn require_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64().with_context(|| {
            format!(
                "{}: metadata {key} should be an unsigned integer, found {}",
                self.path.display(),
                v.type_name()
            )
        })
    }

    pub fn require_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().with_context(|| {
            format!(
                "{}: metadata {key} should be a number, found {}",
                self.path.display(),
                v.type_name()
            )
        })
    }

    pub fn require_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().with_context(|| {
            format!(
                "{}: metadata {key} should be a string, found {}",
                self.path.display(),
                v.type_name()
            )
        })
    }

    /// A string array such as `tokenizer.ggml.tokens`.
    pub fn require_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let v = self.require(key)?;
        let arr = v.as_array().with_context(|| {
            format!(
                "{}: metadata {key} should be an array, found {}",
                self.path.display(),
                v.type_name()
            )
        })?;
        arr.iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str().with_context(|| {
                    format!(
                        "{}: metadata {key}[{i}] should be a string",
                        self.path.display()
                    )
                })
            })
            .collect()
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (bounds were checked at open).
    pub fn raw(&self, info: &GgufTensorInfo) -> &[u8] {
        // checked at open (check_tensor_ranges): inside the data section, no overflow
        let start = (self.data_start + info.offset) as usize;
        let len = info.n_bytes().unwrap_or(0) as usize;
        self.mmap.get(start..start + len).unwrap_or(&[])
    }

    /// Release the pages of a tensor's bytes that this process holds (`fsutil::release_mapped`).
    pub fn release(&self, name: &str) {
        if let Some(info) = self.tensor_info(name) {
            let start = (self.data_start + info.offset) as usize;
            let len = info.n_bytes().unwrap_or(0) as usize;
            crate::fsutil::release_mapped(&self.mmap, start, len);
        }
    }

    /// Dequantise a tensor to f32 in row-major (slowest-first) shape.
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor> {
        let info = self
            .tensor_info(name)
            .with_context(|| format!("{}: no tensor named {name}", self.path.display()))?;
        let data = dequantize(info.ggml_type, self.raw(info), info.num_elements() as usize)
            .with_context(|| format!("{}: tensor {name}", self.path.display()))?;
        HostTensor::new(info.shape(), data)
    }
}

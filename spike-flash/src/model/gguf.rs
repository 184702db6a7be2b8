//! GGUF v2/v3 reader that distrusts the file.
//!
//! # The format, byte by byte
//!
//! Everything is little-endian. A file is a header, `kv_count` metadata pairs, `tensor_count` tensor infos,
//! zero padding up to the alignment, and the data section.
//!
//! ```text
//! header      magic "GGUF" (4 bytes) | version: u32 (2 or 3) | tensor_count: u64 | kv_count: u64
//! string      len: u64 | len bytes of UTF-8, no terminator
//! kv pair     key: string | value_type: u32 | value
//! value       by value_type: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool (one byte, 0 or 1),
//!             8 string, 9 array, 10 u64, 11 i64, 12 f64
//! array       elem_type: u32 | count: u64 | count values of elem_type
//! tensor info name: string | n_dims: u32 (1..=4) | dims: [u64; n_dims] (dims[0] is the row length)
//!             | ggml_type: u32 | offset: u64 (from the start of the data section)
//! data        starts at the first multiple of `general.alignment` (a u32, default 32) after the infos;
//!             every tensor offset is a multiple of the alignment
//! ```
//!
//! Version 2 and 3 share this layout (version 3 only added big-endian files, which this reader rejects
//! through the version check: a byte-swapped version is not 2 or 3).
//!
//! # What the reader guarantees
//!
//! [`GgufFile::open`] and [`GgufFile::from_bytes`] either return a file whose every tensor has a supported
//! type, 1 to 4 non-zero dimensions, a row length that is a whole number of blocks, an aligned offset and a
//! byte range inside the file that overlaps no other tensor, with unique tensor names and unique metadata
//! keys; or an [`Error`] naming the file, the byte offset and the problem. No count read from the file is
//! trusted before it is checked against the bytes left, so a hostile header cannot make the reader allocate
//! more than a small multiple of the file's size, and nothing in here panics on any input.

use super::quant::{self, DType};
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The versions this reader accepts.
pub const SUPPORTED_VERSIONS: [u32; 2] = [2, 3];
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays inside arrays that the reader follows (llama.cpp itself reads none).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// GGUF metadata value type ids (`gguf_type`).
pub mod meta_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Smallest encoding of one metadata pair: empty key (8), type (4), one-byte value (1).
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest encoding of one tensor info: empty name (8), n_dims (4), one dim (8), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// Initial capacity for `count` header entries. Counts are already bounded by the bytes left; capping the
/// reservation as well means memory grows only with entries actually parsed, not with what a header claims.
fn prealloc(count: u64) -> usize {
    count.min(4096) as usize
}

/// A metadata value, as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Elements all of one type. An empty array does not remember its element type.
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The GGUF type id of this value (see [`meta_type`]).
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => meta_type::U8,
            MetaValue::I8(_) => meta_type::I8,
            MetaValue::U16(_) => meta_type::U16,
            MetaValue::I16(_) => meta_type::I16,
            MetaValue::U32(_) => meta_type::U32,
            MetaValue::I32(_) => meta_type::I32,
            MetaValue::F32(_) => meta_type::F32,
            MetaValue::Bool(_) => meta_type::BOOL,
            MetaValue::String(_) => meta_type::STRING,
            MetaValue::Array(_) => meta_type::ARRAY,
            MetaValue::U64(_) => meta_type::U64,
            MetaValue::I64(_) => meta_type::I64,
            MetaValue::F64(_) => meta_type::F64,
        }
    }

    /// The type's name (`u32`, `string`, `array`, ...).
    pub fn type_name(&self) -> &'static str {
        meta_type_name(self.type_id()).unwrap_or("?")
    }

    /// The value as an integer, if it is one of the integer types.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// A short description for error messages: type and value, strings and arrays abbreviated.
    pub fn describe(&self) -> String {
        match self {
            MetaValue::String(s) => {
                let short: String = s.chars().take(40).collect();
                if short.len() < s.len() {
                    format!("string {short:?}...")
                } else {
                    format!("string {short:?}")
                }
            }
            MetaValue::Array(a) => match a.first() {
                Some(first) => format!("array of {} {}", a.len(), first.type_name()),
                None => "empty array".to_string(),
            },
            MetaValue::Bool(v) => format!("bool {v}"),
            MetaValue::F32(v) => format!("f32 {v}"),
            MetaValue::F64(v) => format!("f64 {v}"),
            other => match other.as_i128() {
                Some(v) => format!("{} {v}", other.type_name()),
                None => other.type_name().to_string(),
            },
        }
    }
}

/// Name of a GGUF metadata type id, if it is one.
pub fn meta_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        meta_type::U8 => "u8",
        meta_type::I8 => "i8",
        meta_type::U16 => "u16",
        meta_type::I16 => "i16",
        meta_type::U32 => "u32",
        meta_type::I32 => "i32",
        meta_type::F32 => "f32",
        meta_type::BOOL => "bool",
        meta_type::STRING => "string",
        meta_type::ARRAY => "array",
        meta_type::U64 => "u64",
        meta_type::I64 => "i64",
        meta_type::F64 => "f64",
        _ => return None,
    })
}

/// Bytes one value of a fixed-size type takes, `None` for strings, arrays and unknown types.
fn fixed_size(id: u32) -> Option<u64> {
    Some(match id {
        meta_type::U8 | meta_type::I8 | meta_type::BOOL => 1,
        meta_type::U16 | meta_type::I16 => 2,
        meta_type::U32 | meta_type::I32 | meta_type::F32 => 4,
        meta_type::U64 | meta_type::I64 | meta_type::F64 => 8,
        _ => return None,
    })
}

/// Fewest bytes one value of a known type can take (an empty string, an empty array).
fn min_size(id: u32) -> Option<u64> {
    match id {
        meta_type::STRING => Some(8),
        meta_type::ARRAY => Some(4 + 8),
        _ => fixed_size(id),
    }
}

/// Name of every `ggml_type` id that ggml defines (ids it has removed are absent), so an error can say
/// what a tensor's type is even when this toolkit does not read it.
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "f32",
        1 => "f16",
        2 => "q4_0",
        3 => "q4_1",
        6 => "q5_0",
        7 => "q5_1",
        8 => "q8_0",
        9 => "q8_1",
        10 => "q2_K",
        11 => "q3_K",
        12 => "q4_K",
        13 => "q5_K",
        14 => "q6_K",
        15 => "q8_K",
        16 => "iq2_xxs",
        17 => "iq2_xs",
        18 => "iq3_xxs",
        19 => "iq1_s",
        20 => "iq4_nl",
        21 => "iq3_s",
        22 => "iq2_s",
        23 => "iq4_xs",
        24 => "i8",
        25 => "i16",
        26 => "i32",
        27 => "i64",
        28 => "f64",
        29 => "iq1_m",
        30 => "bf16",
        34 => "tq1_0",
        35 => "tq2_0",
        39 => "mxfp4",
        40 => "nvfp4",
        41 => "q1_0",
        _ => return None,
    })
}

/// One tensor's description from the header. Holds for every `TensorInfo` of an opened file: 1 to 4
/// non-zero dims, `dims[0]` a multiple of the type's block length, `offset` aligned, and
/// `n_bytes == dtype.bytes_for(n_elements())` with the range inside the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (the fastest-varying index).
    pub dims: Vec<u64>,
    pub dtype: DType,
    /// Start of the tensor's bytes, relative to the data section.
    pub offset: u64,
    /// Bytes the tensor takes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (product of the dims).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Number of rows: the product of `dims[1..]` (1 for a vector).
    pub fn rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Elements per row: `dims[0]`.
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(0)
    }

    /// Bytes per row (a whole number of blocks).
    pub fn row_bytes(&self) -> u64 {
        self.dtype.bytes_for(self.row_len()).unwrap_or(0)
    }
}

/// The file's bytes: a read-only map of the file, or a buffer handed in.
enum Storage {
    Mapped(crate::io::Mapping),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An opened GGUF file: parsed header, metadata and tensor table over the file's bytes.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: u64,
    /// Metadata in file order.
    kvs: Vec<(String, MetaValue)>,
    key_index: HashMap<String, usize>,
    /// Tensors in file order.
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("file_len", &self.file_len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("metadata", &self.kvs.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let map = crate::io::map_file(path)?;
        Self::with_storage(path.to_path_buf(), Storage::Mapped(map))
    }

    /// Parses `bytes` as a GGUF file; `label` names it in errors.
    pub fn from_bytes(label: &Path, bytes: Vec<u8>) -> Result<GgufFile> {
        Self::with_storage(label.to_path_buf(), Storage::Owned(bytes))
    }

    fn with_storage(path: PathBuf, storage: Storage) -> Result<GgufFile> {
        let parsed = Parser { bytes: storage.bytes(), pos: 0, path: &path }.parse()?;
        Ok(GgufFile {
            path,
            storage,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            kvs: parsed.kvs,
            key_index: parsed.key_index,
            tensors: parsed.tensors,
            tensor_index: parsed.tensor_index,
        })
    }

    /// Forgets the metadata entries `keep` rejects (the tokenizer's vocabulary of a model whose tokenizer was
    /// built elsewhere, say), freeing their memory; tensors are untouched.
    pub fn retain_metadata(&mut self, keep: impl Fn(&str) -> bool) {
        self.kvs.retain(|(k, _)| keep(k));
        self.kvs.shrink_to_fit();
        self.key_index = self.kvs.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
    }

    /// The path the file was opened from (or the label given to [`GgufFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version: 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data-section alignment in bytes: a power of two.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section from the start of the file (a multiple of the alignment).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The whole file's bytes (zero-copy over the map).
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// Metadata pairs in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &MetaValue)> {
        self.kvs.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.key_index.get(key).map(|&i| &self.kvs[i].1)
    }

    fn require(&self, key: &str) -> Result<&MetaValue> {
        self.get(key).ok_or_else(|| Error::MissingKey { path: self.path.clone(), key: key.to_string() })
    }

    fn bad_key(&self, key: &str, expected: &str, found: &MetaValue) -> Error {
        Error::BadKey {
            path: self.path.clone(),
            key: key.to_string(),
            expected: expected.to_string(),
            found: found.describe(),
        }
    }

    /// `key` as a `u32`: any integer type whose value fits.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.require(key)?;
        v.as_i128()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| self.bad_key(key, "an integer in the u32 range", v))
    }

    /// `key` as a `u64`: any integer type whose value fits.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_i128()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| self.bad_key(key, "an integer in the u64 range", v))
    }

    /// `key` as an `f32`: an `f32`, or an `f64` that is finite as an `f32` (or was not finite already).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        match *v {
            MetaValue::F32(x) => Ok(x),
            MetaValue::F64(x) if (x as f32).is_finite() || !x.is_finite() => Ok(x as f32),
            _ => Err(self.bad_key(key, "an f32 (or an f64 in the f32 range)", v)),
        }
    }

    /// `key` as a `bool`.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            MetaValue::Bool(b) => Ok(*b),
            v => Err(self.bad_key(key, "a bool", v)),
        }
    }

    /// `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            MetaValue::String(s) => Ok(s),
            v => Err(self.bad_key(key, "a string", v)),
        }
    }

    /// `key` as an array of any type.
    pub fn get_array(&self, key: &str) -> Result<&[MetaValue]> {
        match self.require(key)? {
            MetaValue::Array(a) => Ok(a),
            v => Err(self.bad_key(key, "an array", v)),
        }
    }

    /// `key` as an array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.array_of(key, "an array of strings", |_, item| match item {
            MetaValue::String(s) => Ok(s.as_str()),
            _ => Err("an array of strings".into()),
        })
    }

    /// `key` as an array of `i32`: an array of any integer type whose every value fits.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.array_of(key, "an array of integers", |i, item| match item.as_i128() {
            Some(x) => i32::try_from(x).map_err(|_| format!("integers in the i32 range (element {i} is {x})")),
            None => Err("an array of integers".into()),
        })
    }

    /// `key` as an array of `f32`: an array of `f32`, or of `f64` (each converted).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.array_of(key, "an array of floats", |_, item| match *item {
            MetaValue::F32(x) => Ok(x),
            MetaValue::F64(x) => Ok(x as f32),
            _ => Err("an array of floats".into()),
        })
    }

    /// `key` as an array converted element by element: `elem(index, element)` gives the value, or what the
    /// key was expected to be, which the error reports with the whole value. A value that is not an array
    /// is reported as not `expected`.
    fn array_of<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        elem: impl Fn(usize, &'a MetaValue) -> std::result::Result<T, String>,
    ) -> Result<Vec<T>> {
        let v = self.require(key)?;
        let MetaValue::Array(items) = v else {
            return Err(self.bad_key(key, expected, v));
        };
        items.iter().enumerate().map(|(i, item)| elem(i, item).map_err(|e| self.bad_key(key, &e, v))).collect()
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i]).ok_or_else(|| Error::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            what: "not in the file".to_string(),
        })
    }

    /// The stored bytes of tensor `name`, borrowed from the file (no copy).
    pub fn tensor_data(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensor(name)?;
        let start = self.data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        let slice = match (start.map(usize::try_from), end.map(usize::try_from)) {
            (Some(Ok(s)), Some(Ok(e))) => self.storage.bytes().get(s..e),
            _ => None,
        };
        // Opening checked that every tensor lies inside the file, so this fails only if that check is wrong.
        slice.ok_or_else(|| Error::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            what: format!("{} bytes at data offset {} lie outside the file", t.n_bytes, t.offset),
        })
    }

    /// Tensor `name` dequantized to `f32`, in ggml element order (row by row).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        let bytes = self.tensor_data(name)?;
        let n = usize::try_from(t.n_elements()).map_err(|_| Error::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            what: format!("{} elements do not fit in memory on this machine", t.n_elements()),
        })?;
        let mut out = vec![0.0f32; n];
        quant::dequantize(t.dtype, bytes, &mut out).map_err(|e| Error::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            what: e.to_string(),
        })?;
        Ok(out)
    }
}

/// What the parser finds; the storage is attached afterwards.
struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    kvs: Vec<(String, MetaValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// A cursor over the file's bytes that checks every read against the bytes left.
struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Parser<'a> {
    fn err(&self, offset: usize, what: impl Into<String>) -> Error {
        Error::Gguf { path: self.path.to_path_buf(), offset: offset as u64, what: what.into() }
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    /// The next `n` bytes; `what` names them in the truncation error.
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self
                .err(self.pos, format!("file truncated: {} needs {n} bytes, only {} left", what(), self.remaining())));
        }
        let start = self.pos;
        // `n <= remaining`, so it fits in usize and the slice is in bounds.
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    /// A length-prefixed UTF-8 string.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let at = self.pos;
        let len = self.u64(&|| format!("the length of {}", what()))?;
        if len > self.remaining() {
            return Err(self.err(
                at,
                format!("{} claims a length of {len} bytes, but only {} bytes are left", what(), self.remaining()),
            ));
        }
        let body_at = self.pos;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|e| self.err(body_at + e.utf8_error().valid_up_to(), format!("{} is not valid UTF-8", what())))
    }

    fn parse(mut self) -> Result<Parsed> {
        let magic = self.array::<4>(&|| "the magic".to_string())?;
        if magic != GGUF_MAGIC {
            return Err(self.err(
                0,
                format!("bad magic {:02x?} ({:?}), expected \"GGUF\"", magic, String::from_utf8_lossy(&magic)),
            ));
        }
        let version = self.u32(&|| "the version".to_string())?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            let hint = if (1..=3).contains(&version.swap_bytes()) { " (a big-endian file?)" } else { "" };
            return Err(self.err(4, format!("unsupported GGUF version {version}{hint}: only 2 and 3 are read")));
        }
        let count_at = self.pos;
        let tensor_count = self.u64(&|| "the tensor count".to_string())?;
        let kv_count = self.u64(&|| "the metadata count".to_string())?;
        let left = self.remaining();
        if kv_count > left / MIN_KV_BYTES {
            return Err(self.err(
                count_at + 8,
                format!(
                    "metadata key-value count {kv_count} is impossible: the {left} bytes left hold at most {}",
                    left / MIN_KV_BYTES
                ),
            ));
        }
        if tensor_count > left / MIN_TENSOR_INFO_BYTES {
            return Err(self.err(
                count_at,
                format!(
                    "tensor count {tensor_count} is impossible: the {left} bytes left hold at most {} tensor infos",
                    left / MIN_TENSOR_INFO_BYTES
                ),
            ));
        }

        // Metadata.
        let mut kvs = Vec::with_capacity(prealloc(kv_count));
        let mut key_index = HashMap::with_capacity(prealloc(kv_count));
        let mut alignment_at = None;
        for i in 0..kv_count {
            let key_at = self.pos;
            let key = self.string(&|| format!("metadata key #{i}"))?;
            if key_index.contains_key(&key) {
                return Err(self.err(key_at, format!("duplicate metadata key `{key}`")));
            }
            let type_at = self.pos;
            let ty = self.u32(&|| format!("the value type of metadata `{key}`"))?;
            if key == ALIGNMENT_KEY {
                alignment_at = Some(type_at);
            }
            let value = self.value(ty, type_at, &key, 0)?;
            key_index.insert(key.clone(), kvs.len());
            kvs.push((key, value));
        }

        let alignment = match (key_index.get(ALIGNMENT_KEY), alignment_at) {
            (Some(&i), Some(at)) => {
                let v = &kvs[i].1;
                match v.as_i128().and_then(|a| u32::try_from(a).ok()) {
                    Some(a) if a.is_power_of_two() => u64::from(a),
                    _ => {
                        return Err(self.err(
                            at,
                            format!(
                                "`{ALIGNMENT_KEY}` must be a power of two that fits in u32, found {}",
                                v.describe()
                            ),
                        ))
                    }
                }
            }
            _ => DEFAULT_ALIGNMENT,
        };

        // Tensor infos.
        let mut tensors = Vec::with_capacity(prealloc(tensor_count));
        let mut tensor_index = HashMap::with_capacity(prealloc(tensor_count));
        let mut offset_fields = Vec::with_capacity(prealloc(tensor_count));
        for i in 0..tensor_count {
            let name_at = self.pos;
            let name = self.string(&|| format!("the name of tensor #{i}"))?;
            if tensor_index.contains_key(&name) {
                return Err(self.err(name_at, format!("duplicate tensor name `{name}`")));
            }
            let info = self.tensor_info(name, alignment)?;
            offset_fields.push(self.pos - 8);
            tensor_index.insert(info.name.clone(), tensors.len());
            tensors.push(info);
        }

        let header_end = self.pos as u64;
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let file_len = self.bytes.len() as u64;

        // Every tensor inside the file (the data section too: a tensor is never empty).
        for (t, &field) in tensors.iter().zip(&offset_fields) {
            let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.n_bytes));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(self.err(
                        field,
                        format!(
                            "tensor `{}` ({} bytes at data offset {}, file offset {}) extends past the end of \
                             the {file_len}-byte file",
                            t.name,
                            t.n_bytes,
                            t.offset,
                            u128::from(data_offset) + u128::from(t.offset)
                        ),
                    ))
                }
            }
        }

        // No two tensors share a byte.
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| tensors[i].offset);
        for pair in order.windows(2) {
            let (a, b) = (&tensors[pair[0]], &tensors[pair[1]]);
            // Both ranges are inside the file, so `a.offset + a.n_bytes` does not overflow.
            if a.offset + a.n_bytes > b.offset {
                return Err(self.err(
                    offset_fields[pair[1]],
                    format!(
                        "tensors `{}` (data bytes {}..{}) and `{}` (data bytes {}..{}) overlap",
                        a.name,
                        a.offset,
                        a.offset + a.n_bytes,
                        b.name,
                        b.offset,
                        b.offset + b.n_bytes
                    ),
                ));
            }
        }

        Ok(Parsed { version, alignment, data_offset, kvs, key_index, tensors, tensor_index })
    }

    /// One tensor info after its name.
    fn tensor_info(&mut self, name: String, alignment: u64) -> Result<TensorInfo> {
        let ndims_at = self.pos;
        let n_dims = self.u32(&|| format!("the dimension count of tensor `{name}`"))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(
                self.err(ndims_at, format!("tensor `{name}` has {n_dims} dimensions; 1 to {MAX_DIMS} are allowed"))
            );
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut n_elements: u64 = 1;
        for d in 0..n_dims {
            let dim_at = self.pos;
            let dim = self.u64(&|| format!("dimension {d} of tensor `{name}`"))?;
            if dim == 0 {
                return Err(self.err(dim_at, format!("tensor `{name}` has a zero dimension (dims[{d}] = 0)")));
            }
            // ggml counts elements in i64.
            n_elements = match n_elements.checked_mul(dim) {
                Some(n) if n <= i64::MAX as u64 => n,
                _ => {
                    return Err(
                        self.err(dim_at, format!("tensor `{name}`: element count overflows at dims[{d}] = {dim}"))
                    )
                }
            };
            dims.push(dim);
        }
        let type_at = self.pos;
        let type_id = self.u32(&|| format!("the type of tensor `{name}`"))?;
        let dtype = match DType::from_ggml_id(type_id) {
            Some(t) => t,
            None => {
                return Err(match ggml_type_name(type_id) {
                    Some(type_name) => Error::Unsupported {
                        path: self.path.to_path_buf(),
                        what: format!(
                            "tensor `{name}` has ggml type {type_name} (id {type_id}); this toolkit reads f32, f16, \
                             bf16, q4_0, q4_1 and q8_0"
                        ),
                    },
                    None => self.err(type_at, format!("tensor `{name}` has unknown ggml type id {type_id}")),
                })
            }
        };
        let block = dtype.block_len() as u64;
        if dims[0] % block != 0 {
            return Err(self.err(
                ndims_at + 4,
                format!("tensor `{name}`: row length {} is not a multiple of {dtype}'s block size {block}", dims[0]),
            ));
        }
        let n_bytes = dtype.bytes_for(n_elements).ok_or_else(|| {
            self.err(type_at, format!("tensor `{name}`: byte size of {n_elements} {dtype} elements overflows"))
        })?;
        let offset_at = self.pos;
        let offset = self.u64(&|| format!("the data offset of tensor `{name}`"))?;
        if offset % alignment != 0 {
            return Err(self.err(
                offset_at,
                format!("tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        Ok(TensorInfo { name, dims, dtype, offset, n_bytes })
    }

    /// A value of type `ty` (whose id was read at `type_at`) for metadata `key`, `depth` arrays deep.
    fn value(&mut self, ty: u32, type_at: usize, key: &str, depth: usize) -> Result<MetaValue> {
        let what = || format!("the value of metadata `{key}`");
        Ok(match ty {
            meta_type::U8 => MetaValue::U8(self.array::<1>(&what)?[0]),
            meta_type::I8 => MetaValue::I8(i8::from_le_bytes(self.array::<1>(&what)?)),
            meta_type::U16 => MetaValue::U16(u16::from_le_bytes(self.array::<2>(&what)?)),
            meta_type::I16 => MetaValue::I16(i16::from_le_bytes(self.array::<2>(&what)?)),
            meta_type::U32 => MetaValue::U32(u32::from_le_bytes(self.array::<4>(&what)?)),
            meta_type::I32 => MetaValue::I32(i32::from_le_bytes(self.array::<4>(&what)?)),
            meta_type::F32 => MetaValue::F32(f32::from_le_bytes(self.array::<4>(&what)?)),
            meta_type::U64 => MetaValue::U64(u64::from_le_bytes(self.array::<8>(&what)?)),
            meta_type::I64 => MetaValue::I64(i64::from_le_bytes(self.array::<8>(&what)?)),
            meta_type::F64 => MetaValue::F64(f64::from_le_bytes(self.array::<8>(&what)?)),
            meta_type::BOOL => {
                let at = self.pos;
                match self.array::<1>(&what)?[0] {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    b => return Err(self.err(at, format!("metadata `{key}`: bool byte is {b}, not 0 or 1"))),
                }
            }
            meta_type::STRING => MetaValue::String(self.string(&what)?),
            meta_type::ARRAY => self.array_value(key, depth)?,
            _ => return Err(self.err(type_at, format!("metadata `{key}` has unknown value type {ty}"))),
        })
    }

    /// An array value after its type id.
    fn array_value(&mut self, key: &str, depth: usize) -> Result<MetaValue> {
        let elem_at = self.pos;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.err(elem_at, format!("metadata `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
        }
        let elem_ty = self.u32(&|| format!("the element type of metadata array `{key}`"))?;
        let Some(min) = min_size(elem_ty) else {
            return Err(self.err(elem_at, format!("metadata array `{key}` has unknown element type {elem_ty}")));
        };
        let count_at = self.pos;
        let count = self.u64(&|| format!("the length of metadata array `{key}`"))?;
        let left = self.remaining();
        if count > left / min {
            return Err(self.err(
                count_at,
                format!(
                    "metadata array `{key}` claims {count} {} elements, but the {left} bytes left hold at most {}",
                    meta_type_name(elem_ty).unwrap_or("?"),
                    left / min
                ),
            ));
        }
        // `count * min <= left`: at most one `MetaValue` (32 bytes) is reserved per byte left in the file.
        let mut items = Vec::with_capacity(count as usize);
        for _ in 0..count {
            items.push(self.value(elem_ty, elem_at, key, depth + 1)?);
        }
        Ok(MetaValue::Array(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_file_can_be_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<GgufFile>();
        send_sync::<Error>();
    }

    #[test]
    fn tensor_info_shape_helpers() {
        let t = TensorInfo { name: "w".into(), dims: vec![64, 3, 2], dtype: DType::Q4_1, offset: 0, n_bytes: 6 * 40 };
        assert_eq!((t.n_elements(), t.rows(), t.row_len(), t.row_bytes()), (384, 6, 64, 40));
        let v = TensorInfo { dims: vec![5], dtype: DType::F32, n_bytes: 20, ..t };
        assert_eq!((v.rows(), v.row_len(), v.row_bytes()), (1, 5, 20));
    }

    #[test]
    fn describe_abbreviates() {
        assert_eq!(MetaValue::I32(-1).describe(), "i32 -1");
        assert_eq!(MetaValue::String("a".repeat(50)).describe(), format!("string {:?}...", "a".repeat(40)));
        assert_eq!(MetaValue::Array(vec![MetaValue::U8(1); 3]).describe(), "array of 3 u8");
        assert_eq!(MetaValue::Array(vec![]).describe(), "empty array");
        assert_eq!(MetaValue::F64(0.5).describe(), "f64 0.5");
    }
}

//! Malformed GGUF files, built byte by byte, each differing from a valid file in one place. Every one must
//! be refused with an error that names the file, the problem and (for format errors) the byte offset, and
//! never with a panic or a huge allocation.

#![allow(clippy::unwrap_used)]

use spike_flash::model::gguf::GgufFile;
use spike_flash::model::quant::XorShift64;
use spike_flash::Error;
use std::path::Path;
use std::time::{Duration, Instant};

/// "No huge allocation", enforced: any single allocation above 64 MiB aborts this test binary.
#[global_allocator]
static ALLOC: spike_flash::io::CappedAlloc<{ 64 << 20 }> = spike_flash::io::CappedAlloc;

const LABEL: &str = "bad.gguf";

// GGUF value type ids.
const T_U8: u32 = 0;
const T_U32: u32 = 4;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
// ggml type ids.
const G_F32: u32 = 0;
const G_Q8_0: u32 = 8;

/// Emits GGUF pieces; `pos()` gives the offset of the next byte so tests can name where a problem is.
#[derive(Default)]
struct B(Vec<u8>);

impl B {
    fn pos(&self) -> u64 {
        self.0.len() as u64
    }
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.raw(&[v])
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    fn header(&mut self, version: u32, n_tensors: u64, n_kv: u64) -> &mut Self {
        self.raw(b"GGUF").u32(version).u64(n_tensors).u64(n_kv)
    }
    fn kv_str(&mut self, key: &str, value: &str) -> &mut Self {
        self.str(key).u32(T_STRING).str(value)
    }
    fn kv_u32(&mut self, key: &str, value: u32) -> &mut Self {
        self.str(key).u32(T_U32).u32(value)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ggml_type).u64(offset)
    }
    fn pad(&mut self, align: u64) -> &mut Self {
        while !self.pos().is_multiple_of(align) {
            self.u8(0);
        }
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.raw(&vec![0; n])
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
}

/// Data section of [`valid`]: `a` (f32 [4], 16 bytes) at 0, `b` (q8_0 [32, 2], 68 bytes) at 32.
fn data(b: &mut B) -> &mut B {
    b.pad(32).zeros(16).pad(32).zeros(68).pad(32)
}

/// A small valid file: two metadata pairs and two tensors.
fn valid() -> B {
    let mut b = B::default();
    b.header(3, 2, 2).kv_str("general.architecture", "llama").kv_u32("general.alignment", 32);
    b.tensor("a", &[4], G_F32, 0).tensor("b", &[32, 2], G_Q8_0, 32);
    data(&mut b);
    b
}

/// Parses `bytes` expecting a format error at `offset` whose message contains every one of `needles`.
fn fails_at(bytes: Vec<u8>, offset: u64, needles: &[&str]) -> String {
    let err = GgufFile::from_bytes(Path::new(LABEL), bytes).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with(LABEL), "message names the file: {msg}");
    match err {
        Error::Gguf { offset: at, .. } => assert_eq!(at, offset, "offset in {msg}"),
        other => panic!("expected a GGUF format error, got {other:?}"),
    }
    assert!(msg.contains(&format!("at byte {offset}")), "{msg}");
    for n in needles {
        assert!(msg.contains(n), "expected {n:?} in: {msg}");
    }
    msg
}

/// Like [`fails_at`] without checking the error kind or offset.
fn fails(bytes: Vec<u8>, needles: &[&str]) -> String {
    let msg = GgufFile::from_bytes(Path::new(LABEL), bytes).unwrap_err().to_string();
    assert!(msg.starts_with(LABEL), "message names the file: {msg}");
    for n in needles {
        assert!(msg.contains(n), "expected {n:?} in: {msg}");
    }
    msg
}

#[test]
fn the_valid_base_file_parses() {
    let f = GgufFile::from_bytes(Path::new(LABEL), valid().bytes()).unwrap();
    assert_eq!((f.version(), f.alignment(), f.tensors().len()), (3, 32, 2));
    assert_eq!(f.tensor("b").unwrap().n_bytes, 68);
    assert_eq!(f.tensor_f32("b").unwrap(), vec![0.0; 64]);
    // Version 2 has the same layout.
    let mut v2 = valid().bytes();
    v2[4] = 2;
    assert_eq!(GgufFile::from_bytes(Path::new(LABEL), v2).unwrap().version(), 2);
}

#[test]
fn bad_magic() {
    let mut bytes = valid().bytes();
    bytes[..4].copy_from_slice(b"GGML");
    fails_at(bytes, 0, &["bad magic", "expected \"GGUF\""]);
}

#[test]
fn unknown_versions() {
    for version in [0, 1, 4, 0xFFFF_FFFF] {
        let mut bytes = valid().bytes();
        bytes[4..8].copy_from_slice(&u32::to_le_bytes(version));
        fails_at(bytes, 4, &[&format!("unsupported GGUF version {version}"), "only 2 and 3"]);
    }
    let mut bytes = valid().bytes();
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    fails_at(bytes, 4, &["big-endian"]);
}

#[test]
fn truncated_anywhere() {
    let full = valid().bytes();
    let header_len = {
        let mut b = B::default();
        b.header(3, 2, 2).kv_str("general.architecture", "llama").kv_u32("general.alignment", 32);
        b.tensor("a", &[4], G_F32, 0).tensor("b", &[32, 2], G_Q8_0, 32);
        b.0.len()
    };
    // The padding after the last tensor is optional, so every cut before the last tensor's end must fail.
    let f = GgufFile::from_bytes(Path::new(LABEL), full.clone()).unwrap();
    let b = f.tensor("b").unwrap();
    let end = (f.data_offset() + b.offset + b.n_bytes) as usize;
    assert!(GgufFile::from_bytes(Path::new(LABEL), full[..end].to_vec()).is_ok());
    for len in 0..end {
        let msg = fails(full[..len].to_vec(), &[]);
        if len < header_len {
            // A cut inside a string or a count shows up as a length or count the bytes left cannot hold.
            let seen = ["file truncated", "claims a length", "is impossible"];
            assert!(seen.iter().any(|s| msg.contains(s)), "cut at {len}: {msg}");
        } else {
            assert!(msg.contains("extends past the end"), "cut at {len}: {msg}");
        }
    }
}

#[test]
fn truncated_message_names_what_is_cut() {
    let mut b = B::default();
    b.header(3, 0, 1).str("general.name").u32(T_STRING).u64(10).raw(b"abc");
    fails_at(b.bytes(), 48, &["claims a length of 10 bytes", "only 3 bytes are left"]);
    let mut b = B::default();
    b.header(3, 0, 1).str("k").u32(T_U32).raw(&[1, 2]);
    fails_at(b.bytes(), 37, &["file truncated", "the value of metadata `k`", "needs 4 bytes, only 2 left"]);
}

/// Runs `f` and asserts it took less than a second: a reader that allocated what the header claims, or
/// looped over it, would not.
fn quickly<T>(f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
    out
}

#[test]
fn absurd_counts_fail_fast_without_allocating() {
    let mut b = B::default();
    b.header(3, 1 << 60, 0);
    quickly(|| fails_at(b.bytes(), 8, &["tensor count 1152921504606846976 is impossible"]));

    let mut b = B::default();
    b.header(3, 0, u64::MAX);
    quickly(|| fails_at(b.bytes(), 16, &["metadata key-value count 18446744073709551615 is impossible"]));

    // Plausible for the bytes that are there, but more than the file holds: plain truncation.
    let mut b = B::default();
    b.header(3, 0, 2).kv_u32("a", 1).zeros(12);
    quickly(|| fails(b.bytes(), &["file truncated"]));
}

#[test]
fn huge_string_fails_fast_without_allocating() {
    let mut b = B::default();
    b.header(3, 0, 1).u64(1 << 40).raw(b"general.name");
    quickly(|| fails_at(b.bytes(), 24, &["metadata key #0 claims a length of 1099511627776 bytes"]));

    let mut b = B::default();
    b.header(3, 0, 1).str("k").u32(T_STRING).u64(1 << 40).zeros(64);
    quickly(|| fails_at(b.bytes(), 37, &["claims a length of 1099511627776 bytes"]));

    let mut b = B::default();
    b.header(3, 1, 0).u64(u64::MAX).zeros(64);
    quickly(|| fails_at(b.bytes(), 24, &["the name of tensor #0 claims a length of 18446744073709551615"]));
}

#[test]
fn huge_array_fails_fast_without_allocating() {
    let mut b = B::default();
    b.header(3, 0, 1).str("k").u32(T_ARRAY).u32(T_U8);
    let at = b.pos();
    b.u64(1 << 40).zeros(100);
    quickly(|| fails_at(b.bytes(), at, &["array `k` claims 1099511627776 u8 elements", "hold at most 100"]));

    // Strings take at least 8 bytes each, so 100 bytes hold at most 12 of them.
    let mut b = B::default();
    b.header(3, 0, 1).str("k").u32(T_ARRAY).u32(T_STRING);
    let at = b.pos();
    b.u64(13).zeros(100);
    quickly(|| fails_at(b.bytes(), at, &["claims 13 string elements", "hold at most 12"]));
}

#[test]
fn unknown_value_type() {
    let mut b = B::default();
    b.header(3, 0, 2).kv_u32("ok", 1).str("weird");
    let at = b.pos();
    b.u32(13).u32(0);
    fails_at(b.bytes(), at, &["metadata `weird` has unknown value type 13"]);
}

#[test]
fn unknown_array_element_type() {
    let mut b = B::default();
    b.header(3, 0, 1).str("arr").u32(T_ARRAY);
    let at = b.pos();
    b.u32(99).u64(0);
    fails_at(b.bytes(), at, &["metadata array `arr` has unknown element type 99"]);
}

#[test]
fn bad_bool_byte() {
    let mut b = B::default();
    b.header(3, 0, 1).str("flag").u32(T_BOOL);
    let at = b.pos();
    b.u8(2);
    fails_at(b.bytes(), at, &["metadata `flag`: bool byte is 2, not 0 or 1"]);
}

#[test]
fn invalid_utf8() {
    let mut b = B::default();
    b.header(3, 0, 1).u64(4).raw(b"ab");
    let at = b.pos();
    b.raw(&[0xff, 0xfe]).u32(T_U8).u8(0);
    fails_at(b.bytes(), at, &["metadata key #0 is not valid UTF-8"]);
}

#[test]
fn arrays_nested_too_deep() {
    let mut b = B::default();
    b.header(3, 0, 1).str("deep").u32(T_ARRAY);
    for _ in 0..20 {
        b.u32(T_ARRAY).u64(1);
    }
    b.zeros(64);
    fails(b.bytes(), &["metadata `deep`: arrays nested deeper than 8"]);
}

#[test]
fn unknown_tensor_type() {
    let mut b = B::default();
    b.header(3, 1, 0).str("blk.0.ffn_up.weight").u32(1).u64(32);
    let at = b.pos();
    b.u32(99).u64(0);
    data(&mut b);
    fails_at(b.bytes(), at, &["tensor `blk.0.ffn_up.weight` has unknown ggml type id 99"]);
}

#[test]
fn known_but_unsupported_tensor_type() {
    let mut b = B::default();
    b.header(3, 1, 0).tensor("blk.0.ffn_up.weight", &[256], 12, 0).pad(32).zeros(144);
    let err = GgufFile::from_bytes(Path::new(LABEL), b.bytes()).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with(LABEL), "{msg}");
    assert!(msg.contains("tensor `blk.0.ffn_up.weight` has ggml type q4_K (id 12)"), "{msg}");
}

#[test]
fn too_many_or_no_dimensions() {
    let mut b = B::default();
    b.header(3, 1, 0).str("t");
    let at = b.pos();
    b.u32(5).u64(1).u64(1).u64(1).u64(1).u64(1).u32(G_F32).u64(0);
    fails_at(b.bytes(), at, &["tensor `t` has 5 dimensions; 1 to 4 are allowed"]);

    let mut b = B::default();
    b.header(3, 1, 0).str("t");
    let at = b.pos();
    b.u32(0).u32(G_F32).u64(0).zeros(32);
    fails_at(b.bytes(), at, &["tensor `t` has 0 dimensions"]);
}

#[test]
fn zero_dimension() {
    let mut b = B::default();
    b.header(3, 1, 0).str("t").u32(2).u64(4);
    let at = b.pos();
    b.u64(0).u32(G_F32).u64(0);
    data(&mut b);
    fails_at(b.bytes(), at, &["tensor `t` has a zero dimension (dims[1] = 0)"]);
}

#[test]
fn element_count_overflow() {
    let mut b = B::default();
    b.header(3, 1, 0).str("t").u32(3).u64(1 << 31).u64(1 << 31);
    let at = b.pos();
    b.u64(1 << 2).u32(G_F32).u64(0);
    data(&mut b);
    fails_at(b.bytes(), at, &["tensor `t`: element count overflows at dims[2] = 4"]);

    let mut b = B::default();
    b.header(3, 1, 0).str("t").u32(2);
    let at = b.pos();
    b.u64(1 << 63).u64(2).u32(G_F32).u64(0);
    fails_at(b.bytes(), at, &["element count overflows at dims[0] = 9223372036854775808"]);
}

#[test]
fn row_length_not_a_multiple_of_the_block() {
    let mut b = B::default();
    b.header(3, 1, 0).str("blk.0.attn_q.weight");
    let at = b.pos() + 4;
    b.u32(2).u64(48).u64(2).u32(G_Q8_0).u64(0);
    data(&mut b);
    fails_at(b.bytes(), at, &["tensor `blk.0.attn_q.weight`: row length 48 is not a multiple of q8_0's block size 32"]);
}

#[test]
fn alignment_not_a_power_of_two() {
    for bad in [0u32, 3, 48] {
        let mut b = B::default();
        b.header(3, 0, 1).str("general.alignment");
        let at = b.pos();
        b.u32(T_U32).u32(bad);
        fails_at(b.bytes(), at, &["`general.alignment` must be a power of two", &format!("found u32 {bad}")]);
    }
    let mut b = B::default();
    b.header(3, 0, 1).str("general.alignment");
    let at = b.pos();
    b.u32(T_STRING).str("32");
    fails_at(b.bytes(), at, &["`general.alignment` must be a power of two", "found string \"32\""]);
}

#[test]
fn other_power_of_two_alignments_are_honoured() {
    let mut b = B::default();
    b.header(3, 1, 1).kv_u32("general.alignment", 64).tensor("a", &[4], G_F32, 0).pad(64).zeros(16);
    let f = GgufFile::from_bytes(Path::new(LABEL), b.bytes()).unwrap();
    assert_eq!((f.alignment(), f.data_offset() % 64), (64, 0));
}

#[test]
fn tensor_offset_not_aligned() {
    let mut b = B::default();
    b.header(3, 2, 0).tensor("a", &[4], G_F32, 0).str("b").u32(2).u64(32).u64(2).u32(G_Q8_0);
    let at = b.pos();
    b.u64(40);
    data(&mut b);
    fails_at(b.bytes(), at, &["tensor `b`: data offset 40 is not a multiple of the alignment 32"]);
}

#[test]
fn tensor_past_the_end_of_the_file() {
    let mut b = B::default();
    b.header(3, 2, 0).tensor("a", &[4], G_F32, 0).str("b").u32(2).u64(32).u64(2).u32(G_Q8_0);
    let at = b.pos();
    b.u64(64);
    data(&mut b);
    let end = format!("extends past the end of the {}-byte file", b.pos());
    fails_at(b.bytes(), at, &["tensor `b` (68 bytes at data offset 64", &end]);

    // An offset near u64::MAX must not wrap around.
    let mut b = B::default();
    b.header(3, 1, 0).str("a").u32(1).u64(4).u32(G_F32);
    let at = b.pos();
    b.u64(u64::MAX - 31);
    data(&mut b);
    fails_at(b.bytes(), at, &["tensor `a`", "extends past the end"]);
}

#[test]
fn overlapping_tensors() {
    let mut b = B::default();
    b.header(3, 3, 0).tensor("a", &[4], G_F32, 0).tensor("b", &[32, 2], G_Q8_0, 32).str("c").u32(1).u64(16);
    b.u32(G_F32);
    let at = b.pos();
    b.u64(64);
    data(&mut b);
    fails_at(b.bytes(), at, &["tensors `b` (data bytes 32..100) and `c` (data bytes 64..128) overlap"]);
}

#[test]
fn duplicate_tensor_names() {
    let mut b = B::default();
    b.header(3, 2, 0).tensor("a", &[4], G_F32, 0);
    let at = b.pos();
    b.tensor("a", &[32, 2], G_Q8_0, 32);
    data(&mut b);
    fails_at(b.bytes(), at, &["duplicate tensor name `a`"]);
}

#[test]
fn duplicate_keys() {
    let mut b = B::default();
    b.header(3, 0, 2).kv_u32("llama.block_count", 30);
    let at = b.pos();
    b.kv_u32("llama.block_count", 31);
    fails_at(b.bytes(), at, &["duplicate metadata key `llama.block_count`"]);
}

#[test]
fn open_names_the_path() {
    let dir = tempfile::tempdir().unwrap();

    let mut bytes = valid().bytes();
    bytes[..4].copy_from_slice(b"XXXX");
    let path = dir.path().join("bad-magic.gguf");
    std::fs::write(&path, bytes).unwrap();
    let msg = GgufFile::open(&path).unwrap_err().to_string();
    assert!(msg.starts_with(&path.display().to_string()) && msg.contains("bad magic"), "{msg}");

    let path = dir.path().join("truncated.gguf");
    std::fs::write(&path, &valid().bytes()[..120]).unwrap();
    let msg = GgufFile::open(&path).unwrap_err().to_string();
    assert!(msg.starts_with(&path.display().to_string()) && msg.contains("file truncated"), "{msg}");

    let path = dir.path().join("empty.gguf");
    std::fs::write(&path, b"").unwrap();
    let msg = GgufFile::open(&path).unwrap_err().to_string();
    assert!(msg.contains("empty.gguf") && msg.contains("file truncated"), "{msg}");

    let path = dir.path().join("missing.gguf");
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("missing.gguf"), "{err}");

    let path = dir.path().join("good.gguf");
    std::fs::write(&path, valid().bytes()).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!((f.path(), f.file_len()), (path.as_path(), valid().bytes().len() as u64));
}

#[test]
fn accessors_report_missing_and_mistyped_keys() {
    let mut b = B::default();
    b.header(3, 0, 4).kv_str("s", "x").kv_u32("n", 7).str("neg").u32(5).u32((-1i32) as u32);
    b.str("arr").u32(T_ARRAY).u32(T_U32).u64(2).u32(1).u32(u32::MAX);
    let f = GgufFile::from_bytes(Path::new(LABEL), b.bytes()).unwrap();
    assert_eq!(f.get_u32("n").unwrap(), 7);
    assert_eq!(f.get_str("s").unwrap(), "x");
    let err = f.get_u32("missing").unwrap_err();
    assert!(matches!(err, Error::MissingKey { .. }), "{err:?}");
    assert!(err.to_string().contains("bad.gguf: missing required metadata key `missing`"), "{err}");
    let err = f.get_u32("neg").unwrap_err();
    assert!(matches!(err, Error::BadKey { .. }), "{err:?}");
    assert!(err.to_string().contains("`neg`: expected an integer in the u32 range, found i32 -1"), "{err}");
    assert!(f.get_str("n").unwrap_err().to_string().contains("expected a string, found u32 7"));
    assert!(f.get_f32("n").is_err() && f.get_bool("s").is_err() && f.get_str_array("s").is_err());
    let msg = f.get_i32_array("arr").unwrap_err().to_string();
    assert!(msg.contains("element 1 is 4294967295"), "{msg}");
    let msg = f.tensor("nope").unwrap_err().to_string();
    assert_eq!(msg, "bad.gguf: tensor `nope`: not in the file");
}

/// Flips random bytes of a valid file (xorshift, seed 0x6775_6766): every result is an error or a file
/// whose tensors all decode, and nothing panics.
#[test]
fn random_corruption_never_panics() {
    // A third tensor and an array make more of the header worth corrupting.
    let mut full = B::default();
    full.header(3, 3, 3).kv_str("general.architecture", "llama").kv_u32("general.alignment", 32);
    full.str("tokens").u32(T_ARRAY).u32(T_STRING).u64(2).str("a").str("bc");
    full.tensor("a", &[4], G_F32, 0).tensor("b", &[32, 2], G_Q8_0, 32).tensor("c", &[2, 2], 1, 128);
    data(&mut full).zeros(8);
    let original = full.bytes();
    let header_len = GgufFile::from_bytes(Path::new(LABEL), original.clone()).unwrap().data_offset() as usize;
    let mut rng = XorShift64::new(0x6775_6766);
    let mut next = || rng.next_u64();
    let (mut ok, mut err) = (0, 0);
    for _ in 0..20_000 {
        let mut bytes = original.clone();
        for _ in 0..1 + next() % 3 {
            let at = (next() % header_len as u64) as usize;
            bytes[at] = next() as u8;
        }
        match GgufFile::from_bytes(Path::new(LABEL), bytes) {
            Ok(f) => {
                ok += 1;
                for t in f.tensors() {
                    assert_eq!(f.tensor_f32(&t.name).unwrap().len() as u64, t.n_elements());
                }
            }
            Err(e) => {
                err += 1;
                assert!(e.to_string().starts_with(LABEL), "{e}");
            }
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

/// Found by the gguf fuzz harness (`fuzz/regressions/gguf/block-count-huge.gguf`): a model whose
/// `llama.block_count` states far more layers than the file holds. Binding it reserved the layer list from
/// that count (an abort: "memory allocation of 275251800 bytes failed"); it must fail on the first missing
/// layer instead.
#[test]
fn block_count_far_beyond_the_tensors_fails_without_allocating() {
    use spike_flash::model::gguf::MetaValue;
    use spike_flash::model::gguf_write::GgufWriter;
    use spike_flash::model::quant::DType;
    use spike_flash::model::synth::{llama_gguf, SynthSpec};

    let valid =
        GgufFile::from_bytes(Path::new(LABEL), llama_gguf(&SynthSpec::tiny_gguf(DType::F32, 3)).unwrap()).unwrap();
    // 1 << 20 is the largest count the configuration accepts (MAX_DIM).
    for count in [3u32, 1 << 20] {
        let mut w = GgufWriter::new();
        for (k, v) in valid.metadata() {
            let v = if k == "llama.block_count" { MetaValue::U32(count) } else { v.clone() };
            w.add_meta(k, v);
        }
        for t in valid.tensors() {
            w.add_tensor(t.name.clone(), &t.dims, t.dtype, valid.tensor_data(&t.name).unwrap().to_vec()).unwrap();
        }
        let g = GgufFile::from_bytes(Path::new(LABEL), w.to_bytes().unwrap()).unwrap();
        let e = quickly(|| spike_flash::model::bind::gguf_llama(std::sync::Arc::new(g))).err().expect("refused");
        assert!(e.to_string().contains("blk.2.attn_norm.weight"), "block_count {count}: {e}");
    }
}

//! What the fuzz harnesses (`fuzz/`, `docs/fuzzing.md`) and their replay in the tests (`tests/fuzz_replay.rs`)
//! do with one input: hand it to one reader the way the reader meets files, then do what a caller does next
//! with whatever the reader accepted. A reader must answer every input with a value or an error; a panic, an
//! abort or a huge allocation here is a bug in the reader. Not part of the toolkit's API.
//!
//! Inputs that stand for several files (a checkpoint's `config.json` and `model.safetensors`; a layout's three
//! files) are packed by [`pack`]: each part but the last preceded by its length (u32, little-endian), the last
//! taking the rest, so a fuzzer mutating the input reaches every file and their lengths.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::model::Model;
use crate::layout::Layout;
use crate::model::bind::{self, Source};
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::model::safetensors::HfCheckpoint;
use crate::model::tokenizer::Tokenizer;

/// Tensors of at most this many elements are also decoded to f32 (larger ones are only located), which keeps
/// one input's work small; the readers' bounds checks are the same for every size.
const DECODE_MAX: u64 = 1 << 16;

/// Packs `parts` into one input for [`unpack`].
pub fn pack(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 < parts.len() {
            let len = u32::try_from(p.len()).expect("fuzz inputs are far below 4 GiB");
            out.extend_from_slice(&len.to_le_bytes());
        }
        out.extend_from_slice(p);
    }
    out
}

/// Splits an input into `n` parts (see the module's documentation). Lengths past the end are cut to what is
/// left, so every input splits.
pub fn unpack(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut rest = data;
    let mut parts = Vec::with_capacity(n);
    for _ in 1..n {
        let (len, after) = match rest {
            [a, b, c, d, after @ ..] => (u32::from_le_bytes([*a, *b, *c, *d]) as usize, after),
            _ => (0, &[][..]),
        };
        let len = len.min(after.len());
        parts.push(&after[..len]);
        rest = &after[len..];
    }
    parts.push(rest);
    parts
}

/// A GGUF file: parsed from bytes, then its configuration, tokenizer, tensors and engine model built.
/// Returns whether the file was accepted as a model.
pub fn gguf(data: &[u8]) -> bool {
    let Ok(g) = GgufFile::from_bytes(Path::new("fuzz.gguf"), data.to_vec()) else { return false };
    for (_, v) in g.metadata() {
        let _ = v.describe();
    }
    for t in g.tensors() {
        if g.tensor_data(&t.name).is_ok() && t.n_elements() <= DECODE_MAX {
            let _ = g.tensor_f32(&t.name);
        }
    }
    let _ = Tokenizer::from_gguf(&g);
    if ModelConfig::from_gguf(&g).is_err() {
        return false;
    }
    let source = Source::Gguf(Arc::new(g));
    let _ = source.parts();
    Model::from_source(&source).is_ok()
}

/// A Hugging Face checkpoint: `config.json` and `model.safetensors` ([`unpack`]ed from `data`) written into
/// the folder `dir` (created if needed), opened, its tensors located and the engine model built. Returns
/// whether the checkpoint was accepted as a model.
pub fn safetensors(dir: &Path, data: &[u8]) -> bool {
    let parts = unpack(data, 2);
    if std::fs::create_dir_all(dir).is_err()
        || std::fs::write(dir.join("config.json"), parts[0]).is_err()
        || std::fs::write(dir.join("model.safetensors"), parts[1]).is_err()
    {
        return false;
    }
    let Ok(ck) = HfCheckpoint::open(dir) else { return false };
    let names: Vec<String> = ck.names().map(str::to_string).collect();
    for name in &names {
        if let Ok(t) = ck.tensor(name) {
            if t.n_elements() as u64 <= DECODE_MAX {
                let _ = t.to_f32();
                let _ = ck.tensor_rows_f32(name, 0..t.rows().min(1));
            }
        }
    }
    let ck = Arc::new(ck);
    let _ = bind::hf(ck.clone());
    Model::from_source(&Source::Hf(ck)).is_ok()
}

/// A flash layout: `manifest.json`, `resident.bin` and `ffn.bin` ([`unpack`]ed from `data`) written into the
/// folder `dir` (created if needed; its name must end in `.spike`), opened, verified, the first and last
/// neuron of every layer read (and checked against the checksum table) and decoded, and the layout loaded as a
/// model runs it (resident model and tokenizer); then the same with the manifest sealed again
/// ([`reseal_manifest`]), since a mutated manifest almost never matches its own checksum and would stop every
/// input at the first check. Returns whether the layout opened either way.
pub fn layout(dir: &Path, data: &[u8]) -> bool {
    let parts = unpack(data, 3);
    let raw = layout_once(dir, [parts[0], parts[1], parts[2]]);
    match reseal_manifest(parts[0]) {
        Some(fixed) if fixed != parts[0] => layout_once(dir, [&fixed, parts[1], parts[2]]) || raw,
        _ => raw,
    }
}

fn layout_once(dir: &Path, parts: [&[u8]; 3]) -> bool {
    let files = [crate::layout::MANIFEST_FILE, crate::layout::RESIDENT_FILE, crate::layout::FFN_FILE];
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    for (name, bytes) in files.iter().zip(parts) {
        if std::fs::write(dir.join(name), bytes).is_err() {
            return false;
        }
    }
    let Ok(lay) = Layout::open(dir) else { return false };
    let _ = lay.verify();
    let m = lay.manifest();
    for l in 0..m.model.n_layers.min(64) {
        for n in [0, m.model.d_ffn.saturating_sub(1)] {
            if let Ok(rec) = lay.neuron_record(l, n) {
                let _ = lay.decode_neuron(&rec);
            }
        }
    }
    if let Ok(loaded) = Layout::load(dir) {
        let _ = Model::new(loaded.resident.parts);
    }
    true
}

/// A neuron list file (a neuron order or a hot list): written to `path` and read by
/// [`read_neuron_lists`](crate::layout::read_neuron_lists); then, taking the first list's length as `d_ffn`,
/// checked as a conversion's order ([`check_order`](crate::layout::check_order)) and handed as a hot list to a
/// neuron cache of the first 64 layers (`hot:0.5+window:2`, which checks the pinned ids). Returns whether the
/// file was read as lists.
pub fn neuron_lists(path: &Path, data: &[u8]) -> bool {
    if std::fs::write(path, data).is_err() {
        return false;
    }
    let Ok(lists) = crate::layout::read_neuron_lists(path) else { return false };
    let d_ffn = lists.first().map_or(0, Vec::len);
    let _ = crate::layout::check_order(&lists, lists.len(), d_ffn);
    let spec = crate::cache::PolicySpec::Hot { fraction: 0.5, window: Some(2) };
    for list in lists.iter().take(64) {
        let n = list.len().max(1);
        let _ = crate::cache::LayerCache::new(spec, n, 4, n, Some(list));
    }
    true
}

/// `manifest` sealed again (`docs/format.md`): its checksum recomputed over the bytes before its last
/// `"manifest_crc32c"` key, or, without one, the member added as a writer adds it. `None` when neither
/// applies (no closing brace).
pub fn reseal_manifest(manifest: &[u8]) -> Option<Vec<u8>> {
    let key = format!("\"{}\"", crate::layout::MANIFEST_CRC_KEY);
    match manifest.windows(key.len()).rposition(|w| w == key.as_bytes()) {
        Some(at) => {
            let mut out = manifest[..at].to_vec();
            let crc = crc32c::crc32c(&out);
            out.extend_from_slice(format!("{key}: {crc}\n}}\n").as_bytes());
            Some(out)
        }
        None => crate::layout::seal_manifest(manifest).ok(),
    }
}

/// A small deterministic generator (splitmix64), so that the replayed mutations are the same on every machine
/// and in every version of the `rand` crate.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// One random mutation of `input`: one to four edits among bit flips, byte overwrites with boundary values
/// (0, 0xFF, 0x7F, 0x80), little-endian 32- and 64-bit boundary integers written over the bytes, truncation,
/// insertion or deletion of a run of bytes, and duplication of a chunk.
pub fn mutate(input: &[u8], rng: &mut SplitMix) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0, 0xFF, 0x7F, 0x80][rng.below(4)];
            }
            2 if len >= 4 => {
                let i = rng.below(len - 3);
                let x: u32 = [0, 1, u32::MAX, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF, 0x1_0000][rng.below(7)];
                v[i..i + 4].copy_from_slice(&x.to_le_bytes());
            }
            3 if len >= 8 => {
                let i = rng.below(len - 7);
                let x: u64 = [0, u64::MAX, 1 << 60, 1 << 32, i64::MAX as u64][rng.below(5)];
                v[i..i + 8].copy_from_slice(&x.to_le_bytes());
            }
            4 => v.truncate(rng.below(len + 1)),
            5 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let fill: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                v.splice(i..i, fill);
            }
            6 if len > 0 => {
                let i = rng.below(len);
                let n = (1 + rng.below(16)).min(len - i);
                v.drain(i..i + n);
            }
            7 if len > 0 => {
                let i = rng.below(len);
                let n = (1 + rng.below(64)).min(len - i);
                let chunk = v[i..i + n].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, chunk);
            }
            _ => {}
        }
    }
    v
}

/// What [`replay`] ran and what went wrong.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    pub seeds: usize,
    pub regressions: usize,
    pub mutants: usize,
    /// Mutants the reader accepted (the rest it refused with an error).
    pub accepted: usize,
    /// Seeds the reader refused: each should be a valid file.
    pub refused_seeds: Vec<PathBuf>,
    /// Inputs that panicked: a file, or `mutant I of FILE`.
    pub panics: Vec<String>,
}

/// The files of `dir`, sorted by name; none if `dir` does not exist.
fn files_in(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in rd {
        let p = e?.path();
        if p.is_file() {
            let b = std::fs::read(&p)?;
            out.push((p, b));
        }
    }
    out.sort();
    Ok(out)
}

/// A harness's short run, for CI: `target` over the seeds `fuzz/corpus/HARNESS/`, the minimized crash inputs
/// `fuzz/regressions/HARNESS/` (under `fuzz_dir`), and `mutants` [`mutate`]d seeds drawn with `seed`. A panic
/// is caught and listed; an abort or a refused allocation ends the process, which fails the test too.
pub fn replay(
    fuzz_dir: &Path,
    harness: &str,
    mutants: usize,
    seed: u64,
    target: impl Fn(&[u8]) -> bool,
) -> std::io::Result<Replay> {
    let seeds = files_in(&fuzz_dir.join("corpus").join(harness))?;
    let regressions = files_in(&fuzz_dir.join("regressions").join(harness))?;
    let mut r = Replay { seeds: seeds.len(), regressions: regressions.len(), ..Default::default() };
    let run = |what: &dyn Fn() -> String, data: &[u8], panics: &mut Vec<String>| {
        catch_unwind(AssertUnwindSafe(|| target(data))).unwrap_or_else(|_| {
            panics.push(what());
            false
        })
    };
    for (p, b) in &seeds {
        if !run(&|| p.display().to_string(), b, &mut r.panics) {
            r.refused_seeds.push(p.clone());
        }
    }
    for (p, b) in &regressions {
        run(&|| p.display().to_string(), b, &mut r.panics);
    }
    if seeds.is_empty() {
        return Ok(r);
    }
    let mut rng = SplitMix::new(seed);
    for i in 0..mutants {
        let (p, b) = &seeds[rng.below(seeds.len())];
        let m = mutate(b, &mut rng);
        if run(&|| format!("mutant {i} of {}", p.display()), &m, &mut r.panics) {
            r.accepted += 1;
        }
        r.mutants += 1;
    }
    Ok(r)
}

/// Seed of the replay tests' mutants.
pub const SEED_MUTANTS: u64 = 0xF022;
/// Mutants per harness in the replay tests.
pub const MUTANTS: usize = 3000;

/// The replay tests' verdict on `harness` (the fuzz folder beside the crate whose manifest folder is
/// `manifest_dir`): every seed accepted, no input panicked, and the mutants reach past the first checks (some
/// accepted, some refused). `Err` says what failed.
pub fn replay_verdict(
    manifest_dir: &str,
    harness: &str,
    target: impl Fn(&[u8]) -> bool,
) -> std::result::Result<Replay, String> {
    let fuzz_dir = Path::new(manifest_dir).join("..").join("fuzz");
    let r = replay(&fuzz_dir, harness, MUTANTS, SEED_MUTANTS, target).map_err(|e| format!("{harness}: {e}"))?;
    if r.seeds == 0 {
        return Err(format!("no seed corpus in {}: run gen-seeds (docs/fuzzing.md)", fuzz_dir.display()));
    }
    if !r.refused_seeds.is_empty() {
        return Err(format!("{harness}: seeds refused: {:?}", r.refused_seeds));
    }
    if !r.panics.is_empty() {
        return Err(format!("{harness}: {} inputs panicked: {:?}", r.panics.len(), r.panics));
    }
    if r.accepted == 0 || r.accepted >= r.mutants {
        return Err(format!("{harness}: {} of {} mutants accepted", r.accepted, r.mutants));
    }
    Ok(r)
}

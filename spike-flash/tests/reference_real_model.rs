//! Real-model test: Spike's Llama forward pass against an independent NumPy reference.
//!
//! The reference is `tests/reference/llama_ref.py` (numpy + llama.cpp's `gguf` package only; see
//! `tests/reference/README.md`). Both run the default model (SmolLM2-135M-Instruct Q4_1) over the same
//! 32 token ids, and the logits of every position must agree: the same argmax, and a maximum absolute
//! difference of at most 1% of that position's logit range (max - min).
//!
//! Skips (prints `SKIP: ...` and passes) when the default model is not on disk, or when python3 or its
//! `gguf`/`numpy` modules are missing; with the environment variable `CI` set, missing Python
//! dependencies are a failure instead. `SPIKE_PYTHON` overrides the interpreter (default `python3`);
//! `SPIKE_REF_TOL` overrides the tolerance (a fraction of the logit range, default 0.01).

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use spike_flash::engine::model::Model;
use spike_flash::model::fetch::default_model_path;
use spike_flash::model::gguf::GgufFile;
use spike_flash::model::tokenizer::Tokenizer;

/// A fixed English text of more than 32 tokens; the test uses its first [`N_TOKENS`] ids.
const TEXT: &str = "Machine learning is a branch of artificial intelligence that allows computers to learn \
                    from data. Instead of being explicitly programmed, a model finds patterns in examples \
                    and uses them to make predictions.";

/// Number of token ids compared.
const N_TOKENS: usize = 32;

/// The first 32 ids of [`TEXT`] as the reference's own byte-level BPE (tests/reference/sanity_check.py)
/// encodes them. Only used for a note if Spike's tokenizer disagrees; the test uses Spike's ids.
const EXPECTED_IDS: [u32; N_TOKENS] = [
    29968, 1380, 314, 253, 7607, 282, 6416, 5290, 338, 2518, 5530, 288, 835, 429, 940, 30, 4736, 282, 1036, 11075,
    22916, 28, 253, 1743, 8284, 3077, 281, 3480, 284, 2925, 601, 288,
];

/// Default tolerance: max |logit diff| as a fraction of the position's logit range.
const DEFAULT_TOL: f64 = 0.01;

type TestResult = Result<(), Box<dyn Error>>;

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("tests").join("reference").join("llama_ref.py")
}

fn python() -> String {
    std::env::var("SPIKE_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn tolerance() -> f64 {
    match std::env::var("SPIKE_REF_TOL") {
        Ok(s) => s.parse::<f64>().unwrap_or_else(|_| panic!("SPIKE_REF_TOL={s:?} is not a number")),
        Err(_) => DEFAULT_TOL,
    }
}

/// `Ok(())` when `python -c "import gguf, numpy"` succeeds, otherwise why not.
fn python_deps_available(python: &str) -> Result<(), String> {
    match Command::new(python).args(["-c", "import gguf, numpy"]).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            Err(format!("`{python} -c \"import gguf, numpy\"` failed ({}): {}", out.status, last.unwrap_or("").trim()))
        }
        Err(e) => Err(format!("cannot run `{python}`: {e}")),
    }
}

/// Reads the reference's raw little-endian f32 logits.
fn read_f32_le(path: &Path) -> Result<Vec<f32>, Box<dyn Error>> {
    let bytes = std::fs::read(path)?;
    if bytes.len() % 4 != 0 {
        return Err(format!("{}: {} bytes is not a multiple of 4", path.display(), bytes.len()).into());
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Per-position comparison of the two logit rows.
struct PositionDiff {
    pos: usize,
    token: u32,
    ref_argmax: usize,
    spike_argmax: usize,
    ref_min: f32,
    ref_max: f32,
    /// Reference's top-1 minus top-2 logit.
    ref_margin: f32,
    max_abs_diff: f32,
    /// Vocabulary index where the difference is largest.
    diff_at: usize,
    ref_at: f32,
    spike_at: f32,
}

impl PositionDiff {
    fn range(&self) -> f32 {
        self.ref_max - self.ref_min
    }

    fn rel(&self) -> f64 {
        f64::from(self.max_abs_diff) / f64::from(self.range())
    }

    fn describe(&self) -> String {
        format!(
            "position {} (token {}): argmax ref {} / spike {}; ref logits in [{:.4}, {:.4}] (range {:.4}, \
             top-2 margin {:.4}); max |diff| {:.5} = {:.3}% of range, at vocab id {} (ref {:.5}, spike {:.5})",
            self.pos,
            self.token,
            self.ref_argmax,
            self.spike_argmax,
            self.ref_min,
            self.ref_max,
            self.range(),
            self.ref_margin,
            self.max_abs_diff,
            100.0 * self.rel(),
            self.diff_at,
            self.ref_at,
            self.spike_at,
        )
    }
}

fn compare_row(pos: usize, token: u32, reference: &[f32], spike: &[f32]) -> PositionDiff {
    let ref_argmax = argmax(reference);
    let spike_argmax = argmax(spike);
    let ref_min = reference.iter().copied().fold(f32::INFINITY, f32::min);
    let ref_max = reference.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let second = reference
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != ref_argmax)
        .map(|(_, &v)| v)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut max_abs_diff = 0.0f32;
    let mut diff_at = 0;
    for (i, (&r, &s)) in reference.iter().zip(spike).enumerate() {
        // A NaN in Spike's output must fail the test, so treat it as an infinite difference.
        let d = if s.is_nan() { f32::INFINITY } else { (r - s).abs() };
        if d > max_abs_diff {
            max_abs_diff = d;
            diff_at = i;
        }
    }
    PositionDiff {
        pos,
        token,
        ref_argmax,
        spike_argmax,
        ref_min,
        ref_max,
        ref_margin: ref_max - second,
        max_abs_diff,
        diff_at,
        ref_at: reference[diff_at],
        spike_at: spike[diff_at],
    }
}

#[test]
fn spike_matches_numpy_reference_on_default_model() -> TestResult {
    let model_path = default_model_path();
    if !model_path.exists() {
        println!("SKIP: default model not found at {}; run spike fetch-model", model_path.display());
        return Ok(());
    }
    let python = python();
    if let Err(why) = python_deps_available(&python) {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but the reference's Python dependencies are missing: {why} (pip install gguf numpy)");
        }
        println!("SKIP: {why}; install them with `pip install gguf numpy`");
        return Ok(());
    }
    let script = script_path();
    assert!(script.exists(), "reference script not found at {}", script.display());

    // Tokenize with Spike's tokenizer.
    let gguf = Arc::new(GgufFile::open(&model_path)?);
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let all_ids = tokenizer.encode(TEXT)?;
    assert!(all_ids.len() >= N_TOKENS, "the test text encodes to {} tokens, fewer than {N_TOKENS}", all_ids.len());
    let ids: Vec<u32> = all_ids[..N_TOKENS].to_vec();
    if ids != EXPECTED_IDS {
        println!(
            "note: Spike's tokenizer gives {ids:?}, the reference BPE gives {EXPECTED_IDS:?}; \
             comparing the forward passes on Spike's ids"
        );
    }
    println!("text: {:?}", tokenizer.decode(&ids)?);

    // The reference.
    let dir = tempfile::TempDir::new()?;
    let out = dir.path().join("ref_logits.bin");
    let token_arg = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let started = std::time::Instant::now();
    let output = Command::new(&python)
        .arg(&script)
        .arg("--model")
        .arg(&model_path)
        .arg("--tokens")
        .arg(&token_arg)
        .arg("--out")
        .arg(&out)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "reference script failed ({}):\n{stderr}", output.status);
    println!("reference ran in {:.1} s:\n{}", started.elapsed().as_secs_f64(), stderr.trim_end());

    let sidecar: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("ref_logits.bin.json"))?)?;
    let n_tokens = sidecar["n_tokens"].as_u64().ok_or("sidecar: n_tokens missing")? as usize;
    let vocab = sidecar["vocab"].as_u64().ok_or("sidecar: vocab missing")? as usize;
    assert_eq!(n_tokens, N_TOKENS, "reference wrote {n_tokens} positions");
    let reference = read_f32_le(&out)?;
    assert_eq!(reference.len(), n_tokens * vocab, "reference logits file size");

    // Spike.
    let model = Model::from_gguf(Arc::clone(&gguf))?;
    assert_eq!(model.config().vocab_size, vocab, "vocab size: Spike vs reference");
    let mut state = model.new_state(N_TOKENS);
    let started = std::time::Instant::now();
    let spike = model.forward(&mut state, &ids, true)?;
    println!("spike forward over {N_TOKENS} tokens in {:.3} s", started.elapsed().as_secs_f64());
    assert_eq!(spike.len(), N_TOKENS * vocab, "Spike logits: expected tokens x vocab");

    // Compare every position.
    let tol = tolerance();
    let diffs: Vec<PositionDiff> = (0..N_TOKENS)
        .map(|p| {
            let row = p * vocab..(p + 1) * vocab;
            compare_row(p, ids[p], &reference[row.clone()], &spike[row])
        })
        .collect();
    for d in &diffs {
        println!(
            "pos {:2} token {:6}: argmax ref {:6} spike {:6}  max|diff| {:.5} ({:.3}% of range {:.3})",
            d.pos,
            d.token,
            d.ref_argmax,
            d.spike_argmax,
            d.max_abs_diff,
            100.0 * d.rel(),
            d.range()
        );
    }
    let worst = diffs.iter().max_by(|a, b| a.rel().total_cmp(&b.rel())).ok_or("no positions")?;
    println!("worst {}", worst.describe());

    let argmax_mismatches: Vec<String> =
        diffs.iter().filter(|d| d.ref_argmax != d.spike_argmax).map(PositionDiff::describe).collect();
    let over_tolerance: Vec<String> =
        diffs.iter().filter(|d| d.rel().is_nan() || d.rel() > tol).map(PositionDiff::describe).collect();
    assert!(
        argmax_mismatches.is_empty(),
        "argmax differs at {} position(s):\n{}",
        argmax_mismatches.len(),
        argmax_mismatches.join("\n")
    );
    assert!(
        over_tolerance.is_empty(),
        "max |logit diff| exceeds {:.2}% of the logit range at {} position(s):\n{}",
        100.0 * tol,
        over_tolerance.len(),
        over_tolerance.join("\n")
    );
    Ok(())
}

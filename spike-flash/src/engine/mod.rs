//! The inference engine: kernels, the Llama-family forward pass, KV cache, sampling and evaluation.

pub mod eval;
pub mod input;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod sampler;
pub mod sparse;

/// Sets the number of worker threads of the compute pool (rayon's global pool); call once, before any work.
pub fn init_threads(n: usize) -> crate::Result<()> {
    if n == 0 {
        return Err(crate::Error::Invalid("--threads must be at least 1".into()));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| crate::Error::Invalid(format!("starting {n} threads: {e}")))
}

/// Number of threads the compute pool runs.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

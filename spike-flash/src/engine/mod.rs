//! The inference engine: kernels, activation preparation, the transformer forward pass (Llama family and OPT)
//! with its KV cache, dense and sparse FFN steps, sampling and evaluation.

pub mod eval;
pub mod flash;
pub mod input;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod sampler;
pub mod sparse;

/// Runs `f` on a worker of a new compute pool of `n` threads (rayon) and returns its result. Parallel work
/// started inside `f` then begins on a pool thread: the caller takes part in it instead of handing every call
/// to the pool and sleeping until it returns, which matters when a token makes hundreds of parallel calls.
pub fn run_in_pool<R: Send>(n: usize, f: impl FnOnce() -> R + Send) -> crate::Result<R> {
    if n == 0 {
        return Err(crate::Error::Invalid("a compute pool needs at least 1 thread".into()));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|e| crate::Error::Invalid(format!("starting {n} threads: {e}")))?;
    Ok(pool.install(f))
}

/// Number of threads of the compute pool the caller runs in.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

//! The inference engine: kernels, the Llama-family forward pass, KV cache and sampling.

pub mod kernels;

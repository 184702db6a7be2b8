//! Model import: configuration, GGUF reading and writing, quantized block formats, tokenizer, and the
//! default model's fetcher.

pub mod bind;
pub mod config;
pub mod fetch;
pub mod gguf;
pub mod gguf_write;
pub mod quant;
pub mod synth;
pub mod tokenizer;

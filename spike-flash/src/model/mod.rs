//! Model import: configuration, GGUF reading and writing, Hugging Face safetensors checkpoints, quantized
//! block formats, tokenizer, synthetic models, and the default model's fetcher.

pub mod bind;
pub mod config;
pub mod fetch;
pub mod gguf;
pub mod gguf_write;
pub mod planted;
pub mod quant;
pub mod safetensors;
pub mod synth;
pub mod tokenizer;
pub mod weights;

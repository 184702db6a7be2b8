#!/usr/bin/env python3
"""Independent NumPy reference forward pass for OPT checkpoints in Hugging Face format.

Plain and deliberately separate from Spike: only `numpy`, no torch, no transformers, no safetensors package.
It reads `config.json` and the weights (`model.safetensors`, or the shards a `model.safetensors.index.json`
lists) with its own safetensors parser, converts every tensor to float64 once, and runs the whole forward
pass in float64, so the only approximation relative to the checkpoint is the checkpoint's own dtype.

What it computes is transformers' `OPTForCausalLM` (modeling_opt.py) for one unpadded sequence:
  * Tokens: x = embed_tokens[ids] (vocab x word_embed_proj_dim); if word_embed_proj_dim != hidden_size,
    x = x @ project_in.T. Positions: learned, row p + 2 of embed_positions for position p (OPT's offset of 2;
    the table has max_position_embeddings + 2 rows). h = x + embed_positions[p + 2].
  * Each layer, with LN = LayerNorm(eps 1e-5, weight and bias unless layer_norm_elementwise_affine is false):
      pre-norm (do_layer_norm_before = true, every OPT but 350m):
        h = h + out_proj(attn(self_attn_layer_norm(h)));  h = h + fc2(relu(fc1(final_layer_norm(h))))
      post-norm (OPT-350m):
        h = self_attn_layer_norm(h + out_proj(attn(h)));  h = final_layer_norm(h + fc2(relu(fc1(h))))
    Attention: multi-head, causal; q = (h @ q_proj.T + b_q) * head_dim^-0.5 (the scaling is applied to q, as
    OPT does), k and v with their biases, softmax(q k^T) v per head, then out_proj with its bias. All linear
    layers have biases unless enable_bias is false.
  * After the layers: the decoder's final_layer_norm (pre-norm models only, and not when
    _remove_final_layer_norm), then project_out when word_embed_proj_dim != hidden_size, then
    logits = h @ lm_head.T, where lm_head is `lm_head.weight` or, tied (the default), embed_tokens.

Tensor names are OPTForCausalLM's (`model.decoder.layers.0.fc1.weight`); a bare OPTModel's (`decoder.*`) are
accepted too. Linear weights are [out, in] (PyTorch), so a projection is x @ W.T.

CLI:
  python3 opt_ref.py --model DIR --tokens 2,100,200 --out OUT.bin [--greedy N]
writes the logits of every position as raw little-endian float32 (n_tokens x vocab, row-major) to OUT.bin
and a JSON sidecar OUT.bin.json {"n_tokens", "vocab", "argmax", "mean_nll", "ffn_zero_fraction"}, where
ffn_zero_fraction[l] is the fraction of layer l's fc1 outputs that are exactly zero after the activation,
over all positions (ReLU sparsity). Both files are written under temporary names and renamed, the .bin
first and the .json last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np

from refio import mean_nll, parse_tokens, write_outputs

LN_EPS = 1e-5
POSITION_OFFSET = 2

# --------------------------------------------------------------------------------------------------
# Safetensors, read with numpy alone: 8-byte little-endian header length, JSON header, raw data.
# --------------------------------------------------------------------------------------------------

_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8")}


def read_safetensors(path: str) -> dict:
    """All tensors of one safetensors file as float64 numpy arrays."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise SystemExit(f"opt_ref.py: {path}: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise SystemExit(f"opt_ref.py: {path}: header length {n} runs past the end of the file")
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    body = memoryview(data)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        if dtype not in _DTYPES:
            raise SystemExit(f"opt_ref.py: {path}: tensor {name!r} has unsupported dtype {dtype}")
        begin, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        raw = np.frombuffer(body[begin:end], dtype=_DTYPES[dtype])
        if raw.size != int(np.prod(shape, dtype=np.int64)):
            raise SystemExit(f"opt_ref.py: {path}: tensor {name!r}: {raw.size} elements for shape {shape}")
        if dtype == "BF16":
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = raw
        out[name] = arr.astype(np.float64).reshape(shape)
    return out


def read_checkpoint(model_dir: str) -> dict:
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(read_safetensors(os.path.join(model_dir, shard)))
        return tensors
    return read_safetensors(os.path.join(model_dir, "model.safetensors"))


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class OptRef:
    def __init__(self, model_dir: str):
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        if cfg.get("model_type") != "opt":
            raise SystemExit(f"opt_ref.py: model_type {cfg.get('model_type')!r} is not 'opt'")
        self.d = int(cfg["hidden_size"])
        self.d_ffn = int(cfg["ffn_dim"])
        self.n_head = int(cfg["num_attention_heads"])
        self.n_layer = int(cfg["num_hidden_layers"])
        self.vocab = int(cfg["vocab_size"])
        self.max_pos = int(cfg.get("max_position_embeddings", 2048))
        self.pre_norm = bool(cfg.get("do_layer_norm_before", True))
        self.proj = int(cfg.get("word_embed_proj_dim") or self.d)
        self.bias = bool(cfg.get("enable_bias", True))
        self.affine = bool(cfg.get("layer_norm_elementwise_affine", True))
        self.final_norm = self.pre_norm and not bool(cfg.get("_remove_final_layer_norm", False))
        self.tied = bool(cfg.get("tie_word_embeddings", True))
        self.act = cfg.get("activation_function", "relu")
        if self.act not in ("relu", "gelu"):
            raise SystemExit(f"opt_ref.py: activation_function {self.act!r} is not supported (relu, gelu)")
        if self.d % self.n_head != 0:
            raise SystemExit("opt_ref.py: hidden_size is not a multiple of num_attention_heads")
        self.head_dim = self.d // self.n_head

        w = read_checkpoint(model_dir)
        # A bare OPTModel stores `decoder.*`; OPTForCausalLM stores `model.decoder.*`.
        w.update({"model." + k: v for k, v in list(w.items()) if k.startswith("decoder.")})
        self.w = w

        def get(name, shape, required=True):
            if name not in w:
                if required:
                    raise SystemExit(f"opt_ref.py: tensor {name!r} is missing")
                return None
            if w[name].shape != shape:
                raise SystemExit(f"opt_ref.py: {name} has shape {w[name].shape}, expected {shape}")
            return w[name]

        p = "model.decoder"
        d, f = self.d, self.d_ffn
        self.embed = get(f"{p}.embed_tokens.weight", (self.vocab, self.proj))
        self.positions = get(f"{p}.embed_positions.weight", (self.max_pos + POSITION_OFFSET, d))
        self.project_in = get(f"{p}.project_in.weight", (d, self.proj), self.proj != d)
        self.project_out = get(f"{p}.project_out.weight", (self.proj, d), self.proj != d)
        lm = get("lm_head.weight", (self.vocab, self.proj), not self.tied)
        self.lm_head = lm if (lm is not None and not self.tied) else self.embed
        if self.final_norm and self.affine:
            self.final_ln = (get(f"{p}.final_layer_norm.weight", (d,)), get(f"{p}.final_layer_norm.bias", (d,)))
        else:
            self.final_ln = (None, None)

        def linear(prefix, out_dim, in_dim):
            weight = get(f"{prefix}.weight", (out_dim, in_dim))
            bias = get(f"{prefix}.bias", (out_dim,)) if self.bias else np.zeros(out_dim)
            return weight, bias

        def norm(prefix):
            if not self.affine:
                return (None, None)
            return (get(f"{prefix}.weight", (d,)), get(f"{prefix}.bias", (d,)))

        self.layers = []
        for i in range(self.n_layer):
            lp = f"{p}.layers.{i}"
            self.layers.append(
                {
                    "q": linear(f"{lp}.self_attn.q_proj", d, d),
                    "k": linear(f"{lp}.self_attn.k_proj", d, d),
                    "v": linear(f"{lp}.self_attn.v_proj", d, d),
                    "o": linear(f"{lp}.self_attn.out_proj", d, d),
                    "attn_ln": norm(f"{lp}.self_attn_layer_norm"),
                    "fc1": linear(f"{lp}.fc1", f, d),
                    "fc2": linear(f"{lp}.fc2", d, f),
                    "ffn_ln": norm(f"{lp}.final_layer_norm"),
                }
            )
        self.zero_fraction = []

    def describe(self) -> str:
        return (
            f"opt layers={self.n_layer} d_model={self.d} ffn={self.d_ffn} heads={self.n_head} vocab={self.vocab} "
            f"positions={self.max_pos} pre_norm={self.pre_norm} proj={self.proj} bias={self.bias} "
            f"affine={self.affine} final_norm={self.final_norm} tied={self.tied} act={self.act}"
        )

    @staticmethod
    def layer_norm(x, wb):
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        y = (x - mean) / np.sqrt(var + LN_EPS)
        w, b = wb
        return y if w is None else y * w + b

    def activation(self, x):
        if self.act == "relu":
            return np.maximum(x, 0.0)
        erf = np.vectorize(math.erf)
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))

    def attention(self, h, layer):
        T = h.shape[0]
        nh, hd = self.n_head, self.head_dim
        wq, bq = layer["q"]
        wk, bk = layer["k"]
        wv, bv = layer["v"]
        q = ((h @ wq.T + bq) * hd**-0.5).reshape(T, nh, hd)
        k = (h @ wk.T + bk).reshape(T, nh, hd)
        v = (h @ wv.T + bv).reshape(T, nh, hd)
        causal = np.triu(np.full((T, T), -np.inf), k=1)
        out = np.empty((T, nh, hd))
        for head in range(nh):
            s = q[:, head, :] @ k[:, head, :].T + causal
            s -= s.max(axis=-1, keepdims=True)
            pr = np.exp(s)
            pr /= pr.sum(axis=-1, keepdims=True)
            out[:, head, :] = pr @ v[:, head, :]
        wo, bo = layer["o"]
        return out.reshape(T, nh * hd) @ wo.T + bo

    def ffn(self, h, layer):
        w1, b1 = layer["fc1"]
        w2, b2 = layer["fc2"]
        a = self.activation(h @ w1.T + b1)
        self.zero_fraction.append(float(np.mean(a == 0.0)))
        return a @ w2.T + b2

    def forward(self, tokens) -> np.ndarray:
        """Logits (T, vocab) for every position of `tokens` (float64)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError("tokens must be a non-empty 1-D sequence")
        if tokens.min() < 0 or tokens.max() >= self.vocab:
            raise ValueError(f"token id out of range [0, {self.vocab})")
        T = tokens.size
        if T > self.max_pos:
            raise ValueError(f"{T} tokens exceed max_position_embeddings {self.max_pos}")
        self.zero_fraction = []
        x = self.embed[tokens]
        if self.project_in is not None and self.proj != self.d:
            x = x @ self.project_in.T
        h = x + self.positions[np.arange(T) + POSITION_OFFSET]
        for layer in self.layers:
            if self.pre_norm:
                h = h + self.attention(self.layer_norm(h, layer["attn_ln"]), layer)
                h = h + self.ffn(self.layer_norm(h, layer["ffn_ln"]), layer)
            else:
                h = self.layer_norm(h + self.attention(h, layer), layer["attn_ln"])
                h = self.layer_norm(h + self.ffn(h, layer), layer["ffn_ln"])
        if self.final_norm:
            h = self.layer_norm(h, self.final_ln)
        if self.project_out is not None and self.proj != self.d:
            h = h @ self.project_out.T
        return h @ self.lm_head.T

    def greedy(self, tokens, n):
        seq = list(tokens)
        out = []
        for _ in range(n):
            nxt = int(np.argmax(self.forward(seq)[-1]))
            out.append(nxt)
            seq.append(nxt)
        return out


# --------------------------------------------------------------------------------------------------
# Output, as llama_ref.py writes it
# --------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors)")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids, e.g. 2,100,200")
    ap.add_argument("--out", help="output file for float32 logits (n_tokens x vocab); sidecar OUT.json")
    ap.add_argument("--greedy", type=int, default=0, metavar="N", help="also decode N tokens greedily")
    args = ap.parse_args(argv)

    tokens = parse_tokens(args.tokens, "opt_ref.py")
    if not tokens:
        raise SystemExit("opt_ref.py: no tokens given")

    t0 = time.perf_counter()
    model = OptRef(args.model)
    sys.stderr.write(f"opt_ref.py: {model.describe()} (loaded in {time.perf_counter() - t0:.2f} s)\n")

    t1 = time.perf_counter()
    logits = model.forward(tokens)
    zero = list(model.zero_fraction)
    nll = mean_nll(logits, tokens)
    sys.stderr.write(
        f"opt_ref.py: forward over {len(tokens)} tokens in {time.perf_counter() - t1:.2f} s; mean NLL {nll:.4f}; "
        f"FFN zero fraction per layer {' '.join(f'{z:.3f}' for z in zero)}\n"
    )
    if args.out:
        write_outputs(
            args.out, logits, {"mean_nll": nll if math.isfinite(nll) else None, "ffn_zero_fraction": zero}
        )
    if args.greedy > 0:
        ids = model.greedy(tokens, args.greedy)
        print("greedy ids: " + ",".join(str(i) for i in ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())

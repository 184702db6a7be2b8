#!/usr/bin/env python3
"""Independent NumPy reference forward pass for Llama-architecture GGUF models.

This is deliberately plain: no Spike code, no llama.cpp runtime, only `numpy` and llama.cpp's own GGUF
reader/dequantizer (`pip install gguf numpy`). Weights are dequantized once with
`gguf.quants.dequantize` and the whole forward pass runs in float64, so the only approximation relative to
the GGUF file is the file's own quantization.

Conventions (the ones llama.cpp uses for GGUF llama models):
  * GGUF tensor dims are [in, out] (fastest-varying first); the numpy array is (out, in), so y = x @ W.T.
  * RMSNorm: x / sqrt(mean(x^2) + eps) * w.
  * RoPE, llama.cpp "normal" mode (not NEOX): llama.cpp's converter permutes the Q/K rows so that the
    rotation applies to ADJACENT pairs (x[2i], x[2i+1]) with theta_i = pos * base^(-2i / rot_dim), on the
    first rot_dim dimensions of each head.
  * Causal grouped-query attention, scale 1/sqrt(head_dim); query head h reads KV head h // (n_head/n_kv).
  * SwiGLU FFN: down(silu(gate(x)) * up(x)).
  * Final RMSNorm, logits = x @ output.T, where output is `output.weight` or, if absent, the tied
    `token_embd.weight`.

CLI:
  python3 llama_ref.py --model M.gguf --tokens 504,3575,282 --out OUT.bin [--greedy N]
writes logits of every position as raw little-endian float32 (n_tokens x vocab, row-major) to OUT.bin and
a JSON sidecar OUT.bin.json {"n_tokens", "vocab", "argmax", ...}. Both are written under temporary names
and renamed into place (the .bin first, then the .json, so the sidecar's presence means both are complete).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

from refio import mean_nll, parse_tokens, write_outputs

try:
    import gguf
    from gguf.quants import dequantize
except ImportError as exc:  # pragma: no cover - reported to the caller
    sys.stderr.write(f"llama_ref.py needs the `gguf` package (pip install gguf numpy): {exc}\n")
    sys.exit(3)


# --------------------------------------------------------------------------------------------------
# GGUF loading
# --------------------------------------------------------------------------------------------------


def _field_value(field):
    """Value of a GGUF metadata field, across gguf-py versions."""
    if hasattr(field, "contents"):
        return field.contents()
    # Older gguf-py: scalars live in parts[data[0]], strings are uint8 arrays.
    types = list(field.types)
    if types and types[0] == gguf.GGUFValueType.ARRAY:
        if types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if types and types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]


_REQUIRED = object()


class LlamaRef:
    """A Llama-architecture GGUF model, dequantized into float64 numpy arrays."""

    def __init__(self, path: str, dtype=np.float64):
        self.path = path
        self.dtype = dtype
        reader = gguf.GGUFReader(path)
        self.meta = {name: field for name, field in reader.fields.items()}
        arch = self._get("general.architecture")
        if arch != "llama":
            raise SystemExit(f"llama_ref.py: architecture {arch!r} is not 'llama'")
        self.arch = arch

        def key(name, default=_REQUIRED):
            return self._get(f"{arch}.{name}", default)

        self.n_layer = int(key("block_count"))
        self.d_model = int(key("embedding_length"))
        self.d_ff = int(key("feed_forward_length"))
        self.n_head = int(key("attention.head_count"))
        self.n_head_kv = int(key("attention.head_count_kv", self.n_head))
        self.head_dim = self.d_model // self.n_head
        self.rope_base = float(key("rope.freq_base", 10000.0))
        self.rot_dim = int(key("rope.dimension_count", self.head_dim))
        self.eps = float(key("attention.layer_norm_rms_epsilon"))
        if self._get(f"{arch}.rope.scaling.type", None) not in ("none", None):
            sys.stderr.write("llama_ref.py: warning: rope scaling in metadata is ignored\n")
        if self.n_head % self.n_head_kv != 0:
            raise SystemExit("llama_ref.py: head_count is not a multiple of head_count_kv")
        if self.rot_dim % 2 != 0 or self.rot_dim > self.head_dim:
            raise SystemExit(f"llama_ref.py: bad rope.dimension_count {self.rot_dim}")

        tokens_field = self.meta.get("tokenizer.ggml.tokens")
        self.vocab_tokens = _field_value(tokens_field) if tokens_field is not None else None

        self.tensor_types = {}
        w = {}
        for t in reader.tensors:
            self.tensor_types[t.name] = t.tensor_type.name
            arr = dequantize(t.data, t.tensor_type)
            # GGUF dims are reversed relative to numpy's (row-major) shape.
            shape = tuple(int(d) for d in reversed(list(t.shape)))
            w[t.name] = np.ascontiguousarray(arr.reshape(shape), dtype=dtype)
        self.tied_output = "output.weight" not in w
        self.output = w["output.weight"] if not self.tied_output else w["token_embd.weight"]
        self.embed = w["token_embd.weight"]
        self.vocab = self.output.shape[0]
        self.output_norm = w["output_norm.weight"]

        d, hd = self.d_model, self.head_dim
        expect = {
            "attn_q.weight": (self.n_head * hd, d),
            "attn_k.weight": (self.n_head_kv * hd, d),
            "attn_v.weight": (self.n_head_kv * hd, d),
            "attn_output.weight": (d, self.n_head * hd),
            "ffn_gate.weight": (self.d_ff, d),
            "ffn_up.weight": (self.d_ff, d),
            "ffn_down.weight": (d, self.d_ff),
            "attn_norm.weight": (d,),
            "ffn_norm.weight": (d,),
        }
        self.layers = []
        for i in range(self.n_layer):
            layer = {}
            for name, shape in expect.items():
                arr = w[f"blk.{i}.{name}"]
                if arr.shape != shape:
                    raise SystemExit(f"llama_ref.py: blk.{i}.{name} has shape {arr.shape}, expected {shape}")
                layer[name.split(".")[0]] = arr
            self.layers.append(layer)
        if self.embed.shape != (self.vocab, d) and not self.tied_output:
            raise SystemExit(f"llama_ref.py: token_embd.weight has shape {self.embed.shape}")

        # RoPE inverse frequencies for adjacent pairs: theta_i = base^(-2i/rot_dim).
        i = np.arange(self.rot_dim // 2, dtype=np.float64)
        self.inv_freq = self.rope_base ** (-2.0 * i / self.rot_dim)

    def _get(self, name, default=_REQUIRED):
        field = self.meta.get(name)
        if field is None:
            if default is _REQUIRED:
                raise SystemExit(f"llama_ref.py: GGUF metadata key {name!r} is missing")
            return default
        return _field_value(field)

    def describe(self) -> str:
        return (
            f"arch={self.arch} layers={self.n_layer} d_model={self.d_model} ffn={self.d_ff} "
            f"heads={self.n_head}/{self.n_head_kv} head_dim={self.head_dim} rot_dim={self.rot_dim} "
            f"rope_base={self.rope_base:g} eps={self.eps:g} vocab={self.vocab} "
            f"output={'tied token_embd' if self.tied_output else 'output.weight'}"
        )

    # ----------------------------------------------------------------------------------------------
    # Forward pass
    # ----------------------------------------------------------------------------------------------

    def rms_norm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, positions):
        """x: (T, heads, head_dim). Rotates adjacent pairs (2i, 2i+1) of the first rot_dim dims."""
        angles = positions[:, None].astype(np.float64) * self.inv_freq[None, :]  # (T, rot/2)
        cos = np.cos(angles)[:, None, :]
        sin = np.sin(angles)[:, None, :]
        out = x.copy()
        x0 = x[..., 0 : self.rot_dim : 2]
        x1 = x[..., 1 : self.rot_dim : 2]
        out[..., 0 : self.rot_dim : 2] = x0 * cos - x1 * sin
        out[..., 1 : self.rot_dim : 2] = x0 * sin + x1 * cos
        return out

    def forward(self, tokens) -> np.ndarray:
        """Logits (T, vocab) for every position of `tokens` (float64)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError("tokens must be a non-empty 1-D sequence")
        if tokens.min() < 0 or tokens.max() >= self.embed.shape[0]:
            raise ValueError(f"token id out of range [0, {self.embed.shape[0]})")
        T = tokens.size
        nh, nkv, hd = self.n_head, self.n_head_kv, self.head_dim
        group = nh // nkv
        positions = np.arange(T)
        causal = np.triu(np.full((T, T), -np.inf), k=1)
        scale = 1.0 / math.sqrt(hd)

        x = self.embed[tokens].astype(self.dtype)  # (T, d)
        for layer in self.layers:
            h = self.rms_norm(x, layer["attn_norm"])
            q = (h @ layer["attn_q"].T).reshape(T, nh, hd)
            k = (h @ layer["attn_k"].T).reshape(T, nkv, hd)
            v = (h @ layer["attn_v"].T).reshape(T, nkv, hd)
            q = self.rope(q, positions)
            k = self.rope(k, positions)
            attn = np.empty((T, nh, hd), dtype=self.dtype)
            for head in range(nh):
                kv = head // group
                scores = (q[:, head, :] @ k[:, kv, :].T) * scale + causal  # (T, T)
                scores -= scores.max(axis=-1, keepdims=True)
                p = np.exp(scores)
                p /= p.sum(axis=-1, keepdims=True)
                attn[:, head, :] = p @ v[:, kv, :]
            x = x + attn.reshape(T, nh * hd) @ layer["attn_output"].T

            h = self.rms_norm(x, layer["ffn_norm"])
            gate = h @ layer["ffn_gate"].T
            up = h @ layer["ffn_up"].T
            silu = gate / (1.0 + np.exp(-gate))
            x = x + (silu * up) @ layer["ffn_down"].T

        x = self.rms_norm(x, self.output_norm)
        return x @ self.output.T

    # ----------------------------------------------------------------------------------------------
    # Helpers
    # ----------------------------------------------------------------------------------------------

    def greedy(self, tokens, n):
        """Greedy continuation of `tokens` by n tokens (re-runs the full forward pass each step)."""
        seq = list(tokens)
        out = []
        for _ in range(n):
            logits = self.forward(seq)
            nxt = int(np.argmax(logits[-1]))
            out.append(nxt)
            seq.append(nxt)
        return out

    def decode(self, ids) -> str:
        """Byte-level BPE decode (GPT-2 byte<->unicode table) from the GGUF vocabulary."""
        if self.vocab_tokens is None:
            return ""
        table = _unicode_to_byte()
        data = bytearray()
        for i in ids:
            for ch in self.vocab_tokens[i]:
                if ch in table:
                    data.append(table[ch])
                else:
                    data.extend(ch.encode("utf-8"))
        return data.decode("utf-8", errors="replace")


def _unicode_to_byte():
    """Inverse of GPT-2's bytes_to_unicode()."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="path of a llama-architecture GGUF file")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids, e.g. 504,3575,282")
    ap.add_argument("--out", help="output file for float32 logits (n_tokens x vocab); sidecar OUT.json")
    ap.add_argument("--greedy", type=int, default=0, metavar="N", help="also decode N tokens greedily")
    args = ap.parse_args(argv)

    tokens = parse_tokens(args.tokens, "llama_ref.py")
    if not tokens:
        raise SystemExit("llama_ref.py: no tokens given")

    t0 = time.perf_counter()
    model = LlamaRef(args.model)
    t_load = time.perf_counter() - t0
    sys.stderr.write(f"llama_ref.py: {model.describe()} (loaded in {t_load:.2f} s)\n")

    t1 = time.perf_counter()
    logits = model.forward(tokens)
    t_fwd = time.perf_counter() - t1
    nll = mean_nll(logits, tokens)
    sys.stderr.write(
        f"llama_ref.py: forward over {len(tokens)} tokens in {t_fwd:.2f} s; "
        f"mean next-token NLL {nll:.4f} nats\n"
    )

    if args.out:
        write_outputs(args.out, logits, {"mean_nll": nll if math.isfinite(nll) else None})

    if args.greedy > 0:
        t2 = time.perf_counter()
        ids = model.greedy(tokens, args.greedy)
        t_gen = time.perf_counter() - t2
        print("greedy ids: " + ",".join(str(i) for i in ids))
        print("greedy text: " + json.dumps(model.decode(ids)))
        sys.stderr.write(f"llama_ref.py: greedy decode of {args.greedy} tokens in {t_gen:.2f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

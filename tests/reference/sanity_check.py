#!/usr/bin/env python3
"""Self-check of llama_ref.py on the default model (SmolLM2-135M-Instruct Q4_1), independent of Spike.

Checks:
  1. a minimal byte-level BPE (ASCII text only, built from the GGUF's tokens and merges) encodes
     "The capital of France is" as 504 3575 282 4649 314 (the ids llama.cpp produces);
  2. the reference's greedy continuation of those ids starts with " Paris" "." (llama.cpp's answer);
  3. the mean next-token NLL on a short English passage is modest (< 4 nats/token);
  4. the same checks fail with NEOX-style RoPE (so check 2 really discriminates the RoPE convention).

Usage: python3 tests/reference/sanity_check.py [--model PATH]
Exit status 0 when all checks pass.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402

DEFAULT_MODEL = os.path.expanduser("~/.cache/spike/models/SmolLM2-135M-Instruct.Q4_1.gguf")

PASSAGE = (
    "The sun was setting over the quiet village, and the children were walking home from school. "
    "Their mother had cooked a warm dinner of soup and bread, and the whole family sat down at the "
    "table to eat together. After dinner, the father read a story from an old book."
)

# SmolLM's pre-tokenizer: single digits, then GPT-2's regex (ASCII approximation of \p{L} / \p{N}).
_PRETOK = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")


class MiniBpe:
    """GPT-2 style byte-level BPE for ASCII text, from GGUF metadata. For sanity checks only."""

    def __init__(self, model: llama_ref.LlamaRef):
        self.vocab = {t: i for i, t in enumerate(model.vocab_tokens)}
        merges = model._get("tokenizer.ggml.merges")
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.byte_to_unicode = {b: c for c, b in llama_ref._unicode_to_byte().items()}

    def _bpe(self, word: str):
        parts = list(word)
        while len(parts) > 1:
            best = None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
        return [self.vocab[p] for p in parts]

    def encode(self, text: str):
        if not text.isascii():
            raise ValueError("MiniBpe handles ASCII text only")
        ids = []
        for piece in _PRETOK.findall(text):
            mapped = "".join(self.byte_to_unicode[b] for b in piece.encode("utf-8"))
            ids.extend(self._bpe(mapped))
        return ids


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    args = ap.parse_args()
    ok = True

    t0 = time.perf_counter()
    model = llama_ref.LlamaRef(args.model)
    print(f"loaded in {time.perf_counter() - t0:.2f} s: {model.describe()}")
    bpe = MiniBpe(model)

    prompt = "The capital of France is"
    ids = bpe.encode(prompt)
    expect_ids = [504, 3575, 282, 4649, 314]
    print(f"1. encode({prompt!r}) = {ids}")
    if ids != expect_ids:
        print(f"   FAIL: expected {expect_ids}")
        ok = False

    paris = bpe.vocab["\u0120Paris"]
    dot = bpe.vocab["."]
    t1 = time.perf_counter()
    cont = model.greedy(expect_ids, 4)
    print(f"2. greedy continuation {cont} = {model.decode(cont)!r} ({time.perf_counter() - t1:.2f} s); "
          f"' Paris' = {paris}, '.' = {dot}")
    if cont[:2] != [paris, dot]:
        print("   FAIL: expected ' Paris.'")
        ok = False

    passage_ids = bpe.encode(PASSAGE)
    t2 = time.perf_counter()
    logits = model.forward(passage_ids)
    nll = llama_ref.mean_nll(logits, passage_ids)
    print(f"3. passage of {len(passage_ids)} tokens: mean NLL {nll:.3f} nats/token "
          f"(ppl {np.exp(nll):.1f}) ({time.perf_counter() - t2:.2f} s)")
    if not nll < 4.0:
        print("   FAIL: expected < 4 nats/token")
        ok = False

    # Negative control: the NEOX rotation (pairs (i, i + rot/2)) must do visibly worse.
    def rope_neox(x, positions):
        half = model.rot_dim // 2
        ang = positions[:, None].astype(np.float64) * model.inv_freq[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = x.copy()
        x0, x1 = x[..., :half], x[..., half : model.rot_dim]
        out[..., :half] = x0 * cos - x1 * sin
        out[..., half : model.rot_dim] = x0 * sin + x1 * cos
        return out

    normal_rope = model.rope
    model.rope = rope_neox
    try:
        nll_neox = llama_ref.mean_nll(model.forward(passage_ids), passage_ids)
        cont_neox = model.greedy(expect_ids, 2)
    finally:
        model.rope = normal_rope
    print(f"4. with NEOX RoPE instead: mean NLL {nll_neox:.3f}, greedy {cont_neox} = "
          f"{model.decode(cont_neox)!r}")
    if not nll_neox > nll + 0.5:
        print("   FAIL: the RoPE convention does not matter?")
        ok = False

    print("ALL OK" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

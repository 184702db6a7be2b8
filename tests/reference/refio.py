"""Output and argument helpers shared by the reference forward passes (llama_ref.py, opt_ref.py)."""

from __future__ import annotations

import json
import os

import numpy as np


def write_outputs(out_path: str, logits: np.ndarray, extra: dict) -> None:
    """Logits as raw little-endian float32 (n_tokens x vocab) at out_path, and a JSON sidecar out_path.json
    with n_tokens, vocab, argmax and `extra`; both written to temporary names, fsynced, then renamed."""
    logits32 = np.ascontiguousarray(logits, dtype="<f4")
    n_tokens, vocab = logits32.shape
    tmp_bin = out_path + ".tmp"
    tmp_json = out_path + ".json.tmp"
    with open(tmp_bin, "wb") as f:
        f.write(logits32.tobytes(order="C"))
        f.flush()
        os.fsync(f.fileno())
    meta = {"n_tokens": int(n_tokens), "vocab": int(vocab), "argmax": [int(a) for a in logits.argmax(axis=-1)]}
    meta.update(extra)
    with open(tmp_json, "w") as f:
        json.dump(meta, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_bin, out_path)
    os.replace(tmp_json, out_path + ".json")


def parse_tokens(text: str, prog: str) -> list[int]:
    """Token ids from a comma- (or space-) separated list; exits with a message naming `prog` otherwise."""
    parts = [p for p in text.replace(" ", ",").split(",") if p != ""]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise SystemExit(f"{prog}: --tokens must be comma-separated integers, got {text!r}")


def mean_nll(logits, tokens) -> float:
    """Mean next-token negative log-likelihood (nats) of tokens[1:] given the logits of tokens[:-1]."""
    if len(tokens) < 2:
        return float("nan")
    lg = np.asarray(logits, dtype=np.float64)[:-1]
    m = lg.max(axis=-1, keepdims=True)
    logz = (m + np.log(np.exp(lg - m).sum(axis=-1, keepdims=True)))[:, 0]
    target = np.asarray(tokens[1:], dtype=np.int64)
    return float(np.mean(logz - lg[np.arange(len(target)), target]))

#!/usr/bin/env python3
"""The planted model's own predictability, apart from how well a trained predictor learns it.

For a trace of a planted checkpoint (`spike trace`) and that checkpoint, per asked layer: the "ideal context
predictor" scores neuron n by fc1 restricted to the context block C (the coordinates planted.json names)
applied to the recorded FFN input, plus fc1's bias; it is a rank-`context_dims` linear map (96 <= 128, the
paper's rank). Its decision threshold keeps 95% of the truly active (token, neuron) pairs of the trace, as
`spike train-predictor` chooses its own. Prints the true active share, its false negatives and
predicted/true ratio, and the window-of-5 held and new shares of the true and of the predicted sets, never
across a segment boundary (as trace-stats counts them).

  python3 scripts/planted-ideal-predictor.py TRACE CHECKPOINT_DIR LAYERS   (LAYERS: 0,12,23)

Only numpy; reads the trace (docs/trace-format.md) and the safetensors file directly.
"""
import json
import struct
import sys

import numpy as np


def main():
    trace, model, layers = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split(",")]
    with open(trace, "rb") as f:
        fixed = f.read(128)
    if fixed[:8] != b"SPKTRACE":
        sys.exit(f"{trace}: not a trace")
    (hl,) = struct.unpack_from("<I", fixed, 12)
    _, d, nf = struct.unpack_from("<III", fixed, 48)
    t, s = struct.unpack_from("<QQ", fixed, 80)
    (lab,) = struct.unpack_from("<I", fixed, 96)
    with open(trace, "rb") as f:
        hdr = f.read(hl)
    segs = np.frombuffer(hdr, dtype="<u8", count=3 * s, offset=128 + lab + 4 * t).reshape(s, 3)
    sec = 2 * t * (d + nf) + 8
    cons = json.load(open(f"{model}/planted.json"))["construction"]
    c0 = 2 * cons["position_features"]
    c1 = c0 + cons["context_dims"]
    path = f"{model}/model.safetensors"
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    base = 8 + n

    def tensor(name):
        info = header[name]
        s0, _ = info["data_offsets"]
        dt = {"F16": "<f2", "F32": "<f4"}[info["dtype"]]
        return np.memmap(path, dtype=dt, mode="r", offset=base + s0, shape=tuple(info["shape"]))

    def window(sets, k=5):
        held, new = [], []
        for st, ln, _ in segs:
            for i in range(int(st) + k, int(st + ln)):
                w = sets[i - k : i].any(0)
                held.append(w.mean())
                new.append((sets[i] & ~w).mean())
        return np.mean(held), np.mean(new)

    print("layer,true_active,ideal_fn,ideal_predicted_true,true_held5,true_new5,predicted_held5,predicted_new5")
    for l in layers:
        with open(trace, "rb") as f:
            f.seek(hl + l * sec)
            x = np.frombuffer(f.read(2 * t * d), dtype="<f2").reshape(t, d).astype(np.float32)
            act = np.frombuffer(f.read(2 * t * nf), dtype="<f2").reshape(t, nf) > 0
        w = np.asarray(tensor(f"model.decoder.layers.{l}.fc1.weight"), dtype=np.float32)
        b = np.asarray(tensor(f"model.decoder.layers.{l}.fc1.bias"), dtype=np.float32)
        z = x[:, c0:c1] @ w[:, c0:c1].T + b
        pred = z > np.quantile(z[act], 0.05)
        fn = 1 - (pred & act).sum() / act.sum()
        th, tn = window(act)
        ph, pn = window(pred)
        print(f"{l},{act.mean():.4f},{fn:.4f},{pred.sum() / act.sum():.3f},{th:.4f},{tn:.4f},{ph:.4f},{pn:.4f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""stats.csv for a planted checkpoint (columns statistic,planted,paper,band_low,band_high,in_band), from what
`spike trace-stats --predictor` measured on the held-out trace (sparsity.csv, reuse.csv, predictor.csv):
means over layers, window k = 5. The paper's values and bands are the issue's (LLM in a flash on OPT 6.7B).

  python3 scripts/planted-stats-table.py STATS_DIR OUT.csv
"""
import csv
import sys

stats, out = sys.argv[1], sys.argv[2]
sp = [r for r in csv.DictReader(open(f"{stats}/sparsity.csv")) if r["setting"] == "relu"]
reuse = [r for r in csv.DictReader(open(f"{stats}/reuse.csv")) if r["layer"] == "mean" and r["k"] == "5"]
pred = list(csv.DictReader(open(f"{stats}/predictor.csv")))
true_k5 = next(r for r in reuse if r["setting"] == "relu")
pred_k5 = next(r for r in reuse if r["setting"].startswith("predicted-"))
tp = sum(float(r["true_active"]) for r in pred)
pp = sum(float(r["predicted_active"]) for r in pred)
fn = sum(float(r["false_negative_rate"]) * float(r["true_active"]) for r in pred) / tp
rows = [
    ("sparsity", sum(float(r["sparsity_all"]) for r in sp) / len(sp), 0.967, 0.96, 0.98),
    ("window5_share", float(pred_k5["held"]), 0.24, 0.18, 0.30),
    ("new_per_token", float(pred_k5["loaded"]), 0.024, 0.015, 0.035),
    ("predictor_fn", fn, 0.05, 0.03, 0.07),
    ("predictor_overprediction", pp / tp, 3.0, 2.5, 3.5),
    ("window5_share_true_sets", float(true_k5["held"]), "", "", ""),
    ("new_per_token_true_sets", float(true_k5["loaded"]), "", "", ""),
]
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["statistic", "planted", "paper", "band_low", "band_high", "in_band"])
    for name, v, paper, lo, hi in rows:
        inb = "" if lo == "" else str(lo <= v <= hi).lower()
        w.writerow([name, f"{v:.4f}", paper, lo, hi, inb])
print(open(out).read(), end="")

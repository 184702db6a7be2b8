#!/usr/bin/env bash
# How fast the flash loop could decode the default model on this machine with a perfect predictor (issue 6's
# bound), measured rather than assumed:
# 1. Quality: the oracle's GPL-3 perplexity (context 512) at sparsities 0.55 and 0.60, thresholds calibrated
#    on the training trace (0.50 and 0.70 are in results/traces/): how many neurons a token must compute to stay
#    within 5% of dense.
# 2. Reads: `spike bench --layout` rows naive, hybrid and oracle+hybrid (the oracle at sparsity $S, with the hot
#    set the same model budget holds), in three read settings: 4 KiB pages (the default), 512-byte sectors, and
#    512-byte sectors merged across gaps of up to 8 KiB. Every bench run has naive as its same-run reference
#    (the disk switches speed modes, results/device/NOTES.md); the settings take turns, ROUNDS times.
# Runs outside the memory cgroup: the oracle decides from the memory-mapped source model. Reads are O_DIRECT
# (io_uring) and the model budget is the one of scripts/flash-budget.sh, so the bytes and the I/O times are
# those the system would see; the compute times of the oracle rows include the oracle's own dense FFN.
#
# Settings (environment): S (oracle sparsity of the bench rows, default 0.55), BUDGET (60%), ROUNDS (2),
# PROMPT/GEN/PROMPTS (64/32/3). Outputs: results/flash/bound/ (thresholds, perplexity JSONs, bench CSVs and
# tables, summary.csv and summary.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
spike=${SPIKE:-./target/release/spike}
out=results/flash/bound
cache=${SPIKE_CACHE_DIR:-$HOME/.cache/spike}
s=${S:-0.55}
budget=${BUDGET:-60%}
gpl3=/usr/share/common-licenses/GPL-3
layout=$cache/layouts/smol-source-hotfirst.spike
hot=results/traces/stats/hot-thresholds-s0.50.json
trace=results/traces/scratch/train.trace
mkdir -p "$out"
if [ ! -f "$trace" ] || ! "$spike" verify "$layout" >/dev/null 2>&1; then
    bash scripts/flash-budget.sh
fi

for q in 0.55 0.60; do
    thr=$out/thresholds-s$q.json
    [ -f "$thr" ] || "$spike" calibrate "$trace" --sparsity "$q" -o "$thr"
    if [ ! -f "$out/ppl-oracle-s$q.json" ]; then
        echo "== GPL-3 perplexity, oracle at sparsity $q"
        "$spike" perplexity -f "$gpl3" -c 512 --sparsity "oracle:$q" --thresholds "$thr" \
            --json "$out/ppl-oracle-s$q.json"
    fi
done
[ -f "$out/thresholds-s$s.json" ] || "$spike" calibrate "$trace" --sparsity "$s" -o "$out/thresholds-s$s.json"

: >"$out/bench.txt"
for round in $(seq 1 "${ROUNDS:-2}"); do
    for setting in "pages:4096:0" "sectors:512:0" "sectors-gap8K:512:8K"; do
        IFS=: read -r name align gap <<<"$setting"
        echo "== round $round, reads in $name (--io-align $align --max-gap $gap)" | tee -a "$out/bench.txt"
        "$spike" bench --layout "$layout" --budget "$budget" --hot "$hot" --oracle "$out/thresholds-s$s.json" \
            --rows naive,hybrid,oracle+hybrid --io-align "$align" --max-gap "$gap" \
            --prompt "${PROMPT:-64}" --gen "${GEN:-32}" --prompts "${PROMPTS:-3}" \
            --csv "$out/bench-$name-r$round.csv" 2>&1 | tee -a "$out/bench.txt"
    done
done

# Per read setting and round: the oracle row beside naive of the same run.
python3 - "$out" <<'EOF' | tee "$out/summary.txt"
import csv, glob, os, statistics, sys
out = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(out, "bench-*-r*.summary.csv"))):
    setting, rnd = os.path.basename(path)[len("bench-"):-len(".summary.csv")].rsplit("-r", 1)
    by = {r["row"]: r for r in csv.DictReader(open(path))}
    o, n = by["oracle+hybrid"], by["naive"]
    rows.append({
        "setting": setting, "round": rnd,
        "oracle_io_ms": float(o["io_ms"]), "oracle_mb_per_token": float(o["mb_per_token"]),
        "oracle_reads_per_token": float(o["reads_per_token"]), "oracle_active": float(o["active_share"]),
        "naive_io_ms": float(n["io_ms"]), "naive_tokens_per_s": float(n["tokens_per_s"]),
        "hybrid_tokens_per_s": float(by["hybrid"]["tokens_per_s"]),
        "oracle_io_over_naive_io": float(o["io_ms"]) / float(n["io_ms"]),
    })
with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
print("| reads | round | oracle+hybrid I/O ms | MB/token | reads/token | active | naive I/O ms (same run) | ratio |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['setting']} | {r['round']} | {r['oracle_io_ms']:.1f} | {r['oracle_mb_per_token']:.1f} | "
          f"{r['oracle_reads_per_token']:.0f} | {r['oracle_active']:.3f} | {r['naive_io_ms']:.1f} | "
          f"{r['oracle_io_over_naive_io']:.2f} |")
best = min(r["oracle_io_ms"] for r in rows)
print(f"fastest oracle I/O: {best:.1f} ms per token, so at most {1e3 / best:.0f} tok/s with every other cost hidden")
EOF
echo "outputs in $out/"

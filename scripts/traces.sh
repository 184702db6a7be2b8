#!/usr/bin/env bash
# Activation traces on the default model, end to end: build the training corpus (scripts/corpus.sh), trace
# 10,000 tokens of it, calibrate thresholds for sparsity 0.5 and 0.7, measure the trace's statistics, and
# score GPL-3 (held out) at context 512 dense and with the oracle FFN at both sparsities.
# Outputs: results/traces/ (the trace itself, about 1.3 GB, goes to results/traces/scratch/, git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
spike=${SPIKE:-./target/release/spike}
out=results/traces
gpl3=/usr/share/common-licenses/GPL-3
mkdir -p "$out/scratch"
bash scripts/corpus.sh results/corpus/train.txt
/usr/bin/time -f "trace: %e s wall, %U s user, %S s system" \
    "$spike" trace -f results/corpus/train.txt --tokens 10000 --ctx 512 -o "$out/scratch/train.trace" 2>&1 \
    | tee "$out/trace.txt"
for s in 0.50 0.70; do
    "$spike" calibrate "$out/scratch/train.trace" --sparsity "$s" -o "$out/thresholds-s$s.json"
done
"$spike" trace-stats "$out/scratch/train.trace" --thresholds "$out/thresholds-s0.50.json" \
    --thresholds "$out/thresholds-s0.70.json" -o "$out/stats"
"$spike" perplexity -f "$gpl3" -c 512 --json "$out/ppl-gpl3-dense.json"
for s in 0.50 0.70; do
    "$spike" perplexity -f "$gpl3" -c 512 --sparsity "oracle:$s" --thresholds "$out/thresholds-s$s.json" \
        --json "$out/ppl-gpl3-oracle-s$s.json"
done
echo "outputs in $out/"

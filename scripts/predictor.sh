#!/usr/bin/env bash
# Low-rank sparsity predictors on the default model, end to end from a trace (scripts/traces.sh): train at the
# calibrated sparsities 0.5 and 0.7 (ranks 64, 256 for the last 4 layers; 7,903 training tokens of the
# 10,000-token trace), then score GPL-3 (held out) at context 512 dense and with each predictor choosing the
# FFN's neurons, measuring the predictor's recall against the truly active neurons of GPL-3 as it runs.
# Outputs: results/predictor/ (predictor files go to results/predictor/scratch/, git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
spike=${SPIKE:-./target/release/spike}
traces=${TRACES:-results/traces}
out=results/predictor
gpl3=/usr/share/common-licenses/GPL-3
mkdir -p "$out/scratch"
"$spike" perplexity -f "$gpl3" -c 512 --json "$out/ppl-gpl3-dense.json" | tee "$out/ppl-gpl3-dense.txt"
for s in 0.50 0.70; do
    /usr/bin/time -f "train-predictor: %e s wall, %U s user, %S s system" \
        "$spike" train-predictor "$traces/scratch/train.trace" --thresholds "$traces/thresholds-s$s.json" \
        --rank 64 --rank-last 4:256 -o "$out/scratch/pred-s$s.pred" --csv "$out/layers-s$s.csv" 2>&1 \
        | grep -v '^\s*$' | tee "$out/train-s$s.txt"
    "$spike" perplexity -f "$gpl3" -c 512 --predictor "$out/scratch/pred-s$s.pred" --predictor-recall \
        --json "$out/ppl-gpl3-pred-s$s.json" | tee "$out/ppl-gpl3-pred-s$s.txt"
done
echo "outputs in $out/"

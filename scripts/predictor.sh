#!/usr/bin/env bash
# Low-rank sparsity predictors on the default model, end to end from a trace (scripts/traces.sh): train at the
# calibrated sparsities 0.5 and 0.7 (ranks 64, 256 for the last 4 layers; the trace's 7,903 training tokens),
# with the active neurons weighing alike in the loss (count) or by their magnitude; then score GPL-3 (held out)
# at context 512 dense and with each predictor choosing the FFN's neurons, measuring the predictor's recall
# against the truly active neurons of GPL-3 as it runs.
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
    for w in count magnitude; do
        name="s$s-$w"
        /usr/bin/time -f "train-predictor: %e s wall, %U s user, %S s system" \
            "$spike" train-predictor "$traces/scratch/train.trace" --thresholds "$traces/thresholds-s$s.json" \
            --rank 64 --rank-last 4:256 --positives "$w" -o "$out/scratch/pred-$name.pred" \
            --csv "$out/layers-$name.csv" 2>&1 | grep -v '^\s*$' | tee "$out/train-$name.txt"
        "$spike" perplexity -f "$gpl3" -c 512 --predictor "$out/scratch/pred-$name.pred" --predictor-recall \
            --json "$out/ppl-gpl3-pred-$name.json" | tee "$out/ppl-gpl3-pred-$name.txt"
    done
done
echo "outputs in $out/"

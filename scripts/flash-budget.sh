#!/usr/bin/env bash
# The flash loop on the default model under a DRAM budget (issue 6): the model converted to a layout, a
# predictor trained on traces of the training corpus (scripts/traces.sh makes them), then, inside a memory
# cgroup of 24 MiB + 65% of the model file (scripts/cgroup-run.sh, the cap under which llama.cpp's mmap decodes
# at 8.7 tok/s on this machine kind), the paper's rows side by side (spike bench --layout) and the GPL-3
# perplexity of the predictor + window configuration. The cgroup is created and removed by cgroup-run.sh.
#
# Settings (environment): DTYPE (layout records, default source: rows as the model stores them, q8_0 down columns), BUDGET (model DRAM, default 65%), SHARE (cgroup
# share of the model file, default 0.65), SPARSITY (default 0.50), RANK (predictor rank, default 32), WINDOW (5),
# PROMPT/GEN/PROMPTS (bench prompt tokens, decoded tokens, prompts: 64/64/2).
# Outputs: results/flash/ (bench CSV and table, perplexity JSON, the cgroup's peak memory in the logs).
set -euo pipefail
cd "$(dirname "$0")/.."
spike=${SPIKE:-./target/release/spike}
out=results/flash
cache=${SPIKE_CACHE_DIR:-$HOME/.cache/spike}
model=$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
dtype=${DTYPE:-source}
budget=${BUDGET:-65%}
share=${SHARE:-0.65}
s=${SPARSITY:-0.50}
rank=${RANK:-32}
window=${WINDOW:-5}
gpl3=/usr/share/common-licenses/GPL-3
mkdir -p "$out" "$cache/layouts"
[ -f "$model" ] || "$spike" fetch-model
thr=results/traces/thresholds-s$s.json
trace=results/traces/scratch/train.trace
hot=results/traces/stats/hot-thresholds-s$s.json
if [ ! -f "$trace" ] || [ ! -f "$thr" ] || [ ! -f "$hot" ]; then
    bash scripts/traces.sh
fi
# Hot neurons first (--order): a pinned hot set is then one contiguous run of records per layer, and the
# neurons streamed around it are read in long spans.
layout=$cache/layouts/smol-$dtype-hotfirst.spike
if ! "$spike" verify "$layout" >/dev/null 2>&1; then
    "$spike" convert -m "$model" -o "$layout" --dtype "$dtype" --order "$hot" --force
fi
pred=$out/predictor-s$s-r$rank.pred
if [ ! -f "$pred" ]; then
    "$spike" train-predictor "$trace" --thresholds "$thr" --rank "$rank" -o "$pred" --csv "$out/predictor-s$s-r$rank.csv"
fi
profile=results/device/device-profile.json
prof=()
[ -f "$profile" ] && prof=(--profile "$profile")

echo "== bench inside the cgroup (24 MiB + $share of the model file), model budget $budget"
bash scripts/cgroup-run.sh --model-share "$share" --model "$model" -- \
    "$spike" bench --layout "$layout" --budget "$budget" --predictor "$pred" --hot "$hot" "${prof[@]}" \
    --rows naive,hybrid,predictor,predictor+window --window "$window" \
    --prompt "${PROMPT:-64}" --gen "${GEN:-64}" --prompts "${PROMPTS:-2}" --csv "$out/bench.csv" \
    2>&1 | tee "$out/bench.txt"

echo "== GPL-3 perplexity, predictor + window:$window, model budget $budget, inside the cgroup"
bash scripts/cgroup-run.sh --model-share "$share" --model "$model" -- \
    "$spike" perplexity --layout "$layout" --predictor "$pred" --cache "window:$window" --budget "$budget" \
    --hot "$hot" -f "$gpl3" -c 512 --json "$out/ppl-flash-predictor-window.json" 2>&1 | tee "$out/ppl.txt"
echo "outputs in $out/"

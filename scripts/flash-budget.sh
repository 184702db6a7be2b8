#!/usr/bin/env bash
# The flash loop on the default model under a DRAM budget (issue 6): the model converted to a layout, a
# predictor trained on traces of the training corpus (scripts/traces.sh makes them), then, inside a memory
# cgroup of 24 MiB + 65% of the model file (scripts/cgroup-run.sh, the cap under which llama.cpp's mmap decodes
# at 8.7 tok/s on this machine kind), the paper's rows side by side on the bundled and the split layout (spike
# bench --layout --split-layout), with a device profile taken just before; then, outside the cgroup, the bytes a
# perfect predictor (the oracle) would read with the same hot cache, and the GPL-3 perplexity of the hybrid and
# the predictor + window configurations. The cgroup is created and removed by cgroup-run.sh.
#
# Settings (environment): DTYPE (layout records, default source: rows as the model stores them, q8_0 down
# columns), BUDGET (model DRAM, default 60%: at 65% the process, with its KV cache, code, stacks and
# allocator, sits within 3 MiB of the cgroup limit and the row with a predictor thrashes), SHARE (cgroup share of
# the model file, default 0.65), SPARSITY (default 0.50), RANK (predictor rank, default 32), WINDOW (5),
# PROMPT/GEN/PROMPTS (bench prompt tokens, decoded tokens, prompts = rounds in which every row takes its turn:
# 64/32/6).
# Outputs: results/flash/ (bench CSV and table, device profile, oracle trace, perplexity JSONs; the cgroup's
# peak memory and major faults in bench.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
spike=${SPIKE:-./target/release/spike}
out=results/flash
cache=${SPIKE_CACHE_DIR:-$HOME/.cache/spike}
model=$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
dtype=${DTYPE:-source}
budget=${BUDGET:-60%}
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
split=$cache/layouts/smol-$dtype-hotfirst-split.spike
if ! "$spike" verify "$split" >/dev/null 2>&1; then
    "$spike" convert -m "$model" -o "$split" --dtype "$dtype" --order "$hot" --layout split --force
fi
# The device switches between a slow and a fast mode from outside (results/device/NOTES.md): a short profile of
# the layout's own file, just before the bench, gives the cost model the device as it is during the run.
echo "== device profile of $layout/ffn.bin (short: 30 points x 0.25 s)"
"$spike" profile-device --file "$layout/ffn.bin" --chunks 4K,16K,64K,256K,1M --depths 1,2,4,8,16,32 \
    --seconds-per-point 0.25 --rounds 1 --out "$out/device"
rows=naive,naive+overlap,hybrid,hybrid+overlap,predictor,predictor+window

echo "== bench inside the cgroup (24 MiB + $share of the model file), model budget $budget"
bash scripts/cgroup-run.sh --model-share "$share" --model "$model" -- \
    "$spike" bench --layout "$layout" --split-layout "$split" --budget "$budget" --predictor "$pred" --hot "$hot" \
    --profile "$out/device/device-profile.json" --rows "$rows" --window "$window" \
    --prompt "${PROMPT:-64}" --gen "${GEN:-32}" --prompts "${PROMPTS:-6}" --csv "$out/bench.csv" \
    2>&1 | tee "$out/bench.txt"

# What a perfect predictor would read: the oracle's active sets (magnitude above the calibrated thresholds, ppl
# in results/traces/) with the hot set the budget holds. The oracle computes every neuron from the memory-mapped
# source model to decide, so this runs outside the cgroup and its times are not the system's; its bytes are.
echo "== oracle bound (outside the cgroup: the oracle maps the source model): bytes per token with the hot cache"
"$spike" generate --layout "$layout" --oracle "$thr" --cache hybrid --budget "$budget" --hot "$hot" \
    -p "$(head -c 600 "$gpl3")" -n "${GEN:-64}" --ignore-eos --trace-out "$out/oracle-hot.csv" >/dev/null

# Perplexity is deterministic, so it is measured outside the cgroup (at context 512 the f32 KV cache alone is
# 23.6 MB, which the cgroup's 24 MiB of slack cannot also hold), with the same model budget and cache.
echo "== GPL-3 perplexity, hybrid (the hot set the budget holds, every neuron computed), model budget $budget"
"$spike" perplexity --layout "$layout" --cache hybrid --budget "$budget" --hot "$hot" -f "$gpl3" -c 512 \
    --json "$out/ppl-flash-hybrid.json" 2>&1 | tee "$out/ppl.txt"
echo "== GPL-3 perplexity, predictor + window:$window, model budget $budget"
"$spike" perplexity --layout "$layout" --predictor "$pred" --cache "window:$window" --budget "$budget" \
    --hot "$hot" -f "$gpl3" -c 512 --json "$out/ppl-flash-predictor-window.json" 2>&1 | tee -a "$out/ppl.txt"
echo "outputs in $out/"

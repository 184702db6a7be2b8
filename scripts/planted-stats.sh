#!/usr/bin/env bash
# Activation statistics of a planted OPT checkpoint, measured with the real pipeline: synth (planted), trace
# on the calibration text, train the predictor there (the paper's ranks), trace a held-out text, and measure
# it with trace-stats (true sets, and the predictor's predicted sets, which the window caches).
#
#   bash scripts/planted-stats.sh [--preset tiny|opt-1.3b|opt-6.7b] [--plan FILE] [--calib-tokens N]
#                                 [--heldout-tokens N] [--epochs E] [--lr LR] [--rank R] [--rank-last K:R]
#
# Calibration text: /usr/share/common-licenses/GPL-3. Held-out text: Apache-2.0 then MPL-2.0 from the same
# folder. Both split into documents at blank lines. Big files go to ${SPIKE_CACHE_DIR:-~/.cache/spike}/planted/
# (outside the work tree); the summaries are printed. Everything runs under nice -n 19.
set -euo pipefail

preset=opt-1.3b
plan=experiments/plans/opt-planted-v2.toml
calib_tokens=4000
heldout_tokens=800
epochs=30
lr=0.01
rank=128
rank_last=4:1024
while [[ $# -gt 0 ]]; do
    case "$1" in
        --preset) preset=$2; shift 2 ;;
        --plan) plan=$2; shift 2 ;;
        --calib-tokens) calib_tokens=$2; shift 2 ;;
        --heldout-tokens) heldout_tokens=$2; shift 2 ;;
        --epochs) epochs=$2; shift 2 ;;
        --lr) lr=$2; shift 2 ;;
        --rank) rank=$2; shift 2 ;;
        --rank-last) rank_last=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
spike="$root/target/release/spike"
[[ -x $spike ]] || (cd "$root" && nice -n 19 cargo build --release -p tools)
plan=$(cd "$root" && realpath "$plan")
version=$(basename "$plan" .toml)            # e.g. opt-planted-v2
cache="${SPIKE_CACHE_DIR:-$HOME/.cache/spike}/planted"
mkdir -p "$cache"
lic=/usr/share/common-licenses
model="$cache/$preset-${version#opt-}"       # e.g. opt-1.3b-planted-v2
tag="$preset-${version#opt-}"

run() { echo "+ $*" >&2; nice -n 19 "$@"; }

# Each step is skipped when its output exists (an interrupted run resumes; delete a file to redo its step).
[[ -f $model/config.json ]] || run "$spike" synth --arch opt --preset "$preset" --planted "$plan" -o "$model"
# The calibration trace is not needed again once the predictor and the hot list are made (paper-scale.sh then
# removes it).
calib_done() { [[ -f $cache/$tag-calib.trace || ( -f $cache/$tag-calib.pred && -f $cache/$tag-calib-stats/hot-relu.json ) ]]; }
calib_done || run "$spike" trace -m "$model" -f "$lic/GPL-3" --split paragraphs \
    --tokens "$calib_tokens" -o "$cache/$tag-calib.trace"
[[ -f $cache/$tag-calib.pred ]] || run "$spike" train-predictor "$cache/$tag-calib.trace" \
    -o "$cache/$tag-calib.pred" --rank "$rank" --rank-last "$rank_last" --epochs "$epochs" --lr "$lr"
[[ -f $cache/$tag-heldout.trace || -f $cache/$tag-heldout-stats/predictor.csv ]] || run "$spike" trace -m "$model" -f "$lic/Apache-2.0" -f "$lic/MPL-2.0" \
    --split paragraphs --tokens "$heldout_tokens" -o "$cache/$tag-heldout.trace"
[[ -f $cache/$tag-heldout-stats/predictor.csv ]] || run "$spike" trace-stats "$cache/$tag-heldout.trace" \
    --predictor "$cache/$tag-calib.pred" --k-max 5 -o "$cache/$tag-heldout-stats"

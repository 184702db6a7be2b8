#!/usr/bin/env bash
# The paper's Tables 2 and 3 on a planted OPT checkpoint (a simulation of OPT's activation statistics, not a
# trained model): the whole pipeline, then the flash bench inside a memory cgroup of half the checkpoint plus the
# process's own overhead, measured here.
#
#   bash scripts/paper-scale.sh [--preset opt-1.3b|opt-6.7b|tiny] [--plan FILE] [--prompt N] [--gen N]
#                               [--prompts N] [--out DIR]
#
# Steps (each skipped when its output is already in the cache, so an interrupted run resumes):
#   1. scripts/planted-stats.sh: synth (planted), trace the calibration text, train the predictor (the paper's
#      ranks), trace the held-out text, trace-stats with the predictor -> stats.csv (the paper's statistics);
#   2. the hot list (neurons by firing frequency) from the calibration trace;
#   3. convert to a bundled and a split layout, f16 as the checkpoint stores them, hot neurons first;
#   4. a short device profile of the bundled layout's ffn.bin (the cost model's predicted I/O);
#   5. the process's overhead: the same bench (same prompts and lengths, so the same KV cache, batch buffers
#      and heap growth over the rounds) without a cap, its peak resident memory less the largest model DRAM a
#      row reported (one round was not enough: a run sized by one round thrashed and was OOM-killed in round 2);
#   6. the bench inside the cgroup (limit = 50% of the checkpoint's bytes + that overhead; model budget 50% of
#      the checkpoint), rows taking turns on the bundled and the split layout, held-out text;
#      naive-all reads every weight every token (resident.bin too), as the paper's naive row;
#   7. table3.csv from the bench's summary.
# Big files go to ${SPIKE_CACHE_DIR:-~/.cache/spike}/planted/ (outside the work tree). Outputs:
# results/paper-scale/<preset>-planted-<version>/ (table3.csv, stats.csv, bench.txt, overhead.txt, device/), or
# --out DIR (`spike reproduce --paper-scale` gives its run folder's, so the committed run is not written over).
set -euo pipefail

preset=opt-1.3b
plan=experiments/plans/opt-planted-v2.toml
prompt=64
gen=32
prompts=2
out_arg=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --preset) preset=$2; shift 2 ;;
        --plan) plan=$2; shift 2 ;;
        --prompt) prompt=$2; shift 2 ;;
        --gen) gen=$2; shift 2 ;;
        --prompts) prompts=$2; shift 2 ;;
        --out) out_arg=$2; shift 2 ;;
        *) echo "paper-scale.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$preset" in
    tiny|opt-1.3b|opt-6.7b) ;;
    *) echo "paper-scale.sh: --preset must be tiny, opt-1.3b or opt-6.7b (got '$preset')" >&2; exit 2 ;;
esac

# --out is taken from the directory the script was started in.
[[ -z $out_arg ]] || out_arg=$(mkdir -p "$out_arg" && cd "$out_arg" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
start=$(date +%s)
spike="$root/target/release/spike"
[[ -x $spike ]] || nice -n 19 cargo build --release -p tools
version=$(basename "$plan" .toml)            # e.g. opt-planted-v2
tag="$preset-${version#opt-}"                # e.g. opt-1.3b-planted-v2
cache="${SPIKE_CACHE_DIR:-$HOME/.cache/spike}/planted"
model="$cache/$tag"
out="$root/results/paper-scale/$tag"
[[ -z $out_arg ]] || out=$out_arg
mkdir -p "$cache" "$out"
lic=/usr/share/common-licenses
step() { echo "== [$(( $(date +%s) - start )) s] $*" >&2; }
run() { echo "+ $*" >&2; nice -n 19 "$@"; }

step "1/7 planted statistics (synth, traces, predictor, trace-stats)"
bash scripts/planted-stats.sh --preset "$preset" --plan "$plan"
python3 scripts/planted-stats-table.py "$cache/$tag-heldout-stats" "$out/stats.csv"
pred="$cache/$tag-calib.pred"

step "2/7 hot list from the calibration trace"
hot="$cache/$tag-calib-stats/hot-relu.json"
[[ -f $hot ]] || run "$spike" trace-stats "$cache/$tag-calib.trace" --k-max 5 -o "$cache/$tag-calib-stats"

step "3/7 layouts (bundled and split, f16, hot neurons first)"
bundled="$cache/$tag-bundled.spike"
split="$cache/$tag-split.spike"
for kind in bundled split; do
    dir="$cache/$tag-$kind.spike"
    if ! "$spike" verify "$dir" >/dev/null 2>&1; then
        run "$spike" convert -m "$model" -o "$dir" --layout "$kind" --order "$hot" --force
    fi
done

step "4/7 device profile of the bundled layout's ffn.bin (short)"
run "$spike" profile-device --file "$bundled/ffn.bin" --chunks 4K,16K,64K,256K,1M --depths 1,4,16,32 \
    --seconds-per-point 0.25 --rounds 1 --out "$out/device"

ckpt_bytes=$(stat -c %s "$model/model.safetensors")
half=$(( ckpt_bytes / 2 ))
rows=naive-all,hybrid,predictor,predictor+window
bench=("$spike" bench --layout "$bundled" --split-layout "$split" --budget "$half" --predictor "$pred"
       --hot "$hot" --profile "$out/device/device-profile.json" --rows "$rows" --window 5
       --text "$lic/Apache-2.0")

step "5/7 the process's own overhead (the same bench, uncapped)"
/usr/bin/time -f "%M" -o "$out/overhead.maxrss-kib" \
    "${bench[@]}" --prompt "$prompt" --gen "$gen" --prompts "$prompts" --csv "$cache/$tag-overhead.csv" > "$out/overhead.log" 2>&1
overhead=$(python3 - "$out/overhead.maxrss-kib" "$cache/$tag-overhead.summary.csv" <<'EOF'
import csv, sys
hwm = int(open(sys.argv[1]).read().split()[-1]) * 1024
dram = max(float(r["dram_mib"]) for r in csv.DictReader(open(sys.argv[2]))) * 2**20
print(max(0, int(hwm - dram)))
EOF
)
limit=$(( half + overhead ))
{
    echo "checkpoint $ckpt_bytes B; model budget (50%) $half B"
    echo "uncapped run: peak resident $(( $(cat "$out/overhead.maxrss-kib") * 1024 )) B; overhead over the largest row's model DRAM $overhead B"
    echo "cgroup limit = budget + overhead = $limit B ($(( limit >> 20 )) MiB)"
} | tee "$out/overhead.txt"

step "6/7 the bench inside the cgroup (limit $(( limit >> 20 )) MiB), $prompts prompts of $prompt tokens, $gen decoded"
bash scripts/cgroup-run.sh "$limit" -- "${bench[@]}" --prompt "$prompt" --gen "$gen" --prompts "$prompts" \
    --csv "$out/bench.csv" 2>&1 | tee "$out/bench.txt"

step "7/7 table3.csv"
python3 scripts/paper-scale-table.py "$out/bench.summary.csv" "$out/bench.txt" "$ckpt_bytes" "$out/table3.csv"
rm -f "$cache/$tag-overhead.csv" "$cache/$tag-overhead.summary.csv"
step "done; outputs in $out/ (table3.csv, stats.csv, bench.txt, overhead.txt, device/)"

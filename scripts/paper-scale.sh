#!/usr/bin/env bash
# The paper's Tables 2 and 3 on a planted OPT checkpoint (a simulation of OPT's activation statistics, not a
# trained model): the whole pipeline, then the flash bench inside a memory cgroup of half the checkpoint plus the
# process's own overhead, measured here.
#
#   bash scripts/paper-scale.sh [--preset opt-1.3b|opt-6.7b|tiny] [--plan FILE] [--prompt N] [--gen N]
#                               [--prompts N] [--split-rows ROWS] [--out DIR]
#
# Defaults: 2 prompts of 64 tokens, 32 decoded, every row again on the split layout; for opt-6.7b, where the
# naive row reads 13 GB per token, 1 prompt of 32 tokens, 16 decoded, and only the predictor rows again on
# the split layout (the paper's "+ predictor" and "+ windowing", before bundling), so the two benches (uncapped
# for the overhead, then capped) fit in about 25 minutes.
#
# Steps (each skipped when its output is already in the cache, so an interrupted run resumes):
#   1. scripts/planted-stats.sh: synth (planted), trace the calibration text, train the predictor (the paper's
#      ranks), trace the held-out text, trace-stats with the predictor -> stats.csv (the paper's statistics);
#      the held-out trace is then removed (its statistics are kept);
#   2. the hot list (neurons by firing frequency) from the calibration trace; the calibration trace is then
#      removed (the predictor and the hot list are all that is made from it);
#   3. convert to a bundled and a split layout, f16 as the checkpoint stores them, hot neurons first; the two
#      layouts' resident.bin hold the same bytes, so the split one is a hard link to the bundled one
#      (convert --share-resident compares them in full first);
#   4. a short device profile of the bundled layout's ffn.bin (the cost model's predicted I/O);
#   5. the process's overhead: the same bench (same prompts and lengths, so the same KV cache, batch buffers
#      and heap growth over the rounds) without a cap, its peak resident memory less the largest model DRAM a
#      row reported, plus the peak kernel memory the cgroup was charged (one round was not enough: a run sized
#      by one round thrashed and was OOM-killed in round 2; at 6.7B, a limit without the kernel memory too);
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
prompt=""
gen=""
prompts=""
split_rows=""
out_arg=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --preset) preset=$2; shift 2 ;;
        --plan) plan=$2; shift 2 ;;
        --prompt) prompt=$2; shift 2 ;;
        --gen) gen=$2; shift 2 ;;
        --prompts) prompts=$2; shift 2 ;;
        --split-rows) split_rows=$2; shift 2 ;;
        --out) out_arg=$2; shift 2 ;;
        *) echo "paper-scale.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$preset" in
    tiny|opt-1.3b|opt-6.7b) ;;
    *) echo "paper-scale.sh: --preset must be tiny, opt-1.3b or opt-6.7b (got '$preset')" >&2; exit 2 ;;
esac
rows=naive-all,hybrid,predictor,predictor+window
if [[ $preset == opt-6.7b ]]; then
    : "${prompt:=32}" "${gen:=16}" "${prompts:=1}" "${split_rows:=predictor,predictor+window}"
else
    : "${prompt:=64}" "${gen:=32}" "${prompts:=2}" "${split_rows:=$rows}"
fi

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

heldout="$cache/$tag-heldout.trace"
if [[ -f $heldout && -f $cache/$tag-heldout-stats/predictor.csv ]]; then
    echo "removing $heldout ($(( $(stat -c %s "$heldout") >> 20 )) MiB): its statistics are in $cache/$tag-heldout-stats" >&2
    rm -f "$heldout"
fi

step "2/7 hot list from the calibration trace"
hot="$cache/$tag-calib-stats/hot-relu.json"
[[ -f $hot ]] || run "$spike" trace-stats "$cache/$tag-calib.trace" --k-max 5 -o "$cache/$tag-calib-stats"
if [[ -f $cache/$tag-calib.trace && -f $pred && -f $hot ]]; then
    echo "removing $cache/$tag-calib.trace ($(( $(stat -c %s "$cache/$tag-calib.trace") >> 20 )) MiB): the predictor and the hot list are made" >&2
    rm -f "$cache/$tag-calib.trace"
fi

step "3/7 layouts (bundled and split, f16, hot neurons first)"
bundled="$cache/$tag-bundled.spike"
split="$cache/$tag-split.spike"
share=()
for kind in bundled split; do
    dir="$cache/$tag-$kind.spike"
    if ! "$spike" verify "$dir" >/dev/null 2>&1; then
        run "$spike" convert -m "$model" -o "$dir" --layout "$kind" --order "$hot" --force "${share[@]}"
    fi
    # The two layouts' resident.bin hold the same bytes: the split one links the bundled one's.
    share=(--share-resident "$bundled")
done

step "4/7 device profile of the bundled layout's ffn.bin (short)"
run "$spike" profile-device --file "$bundled/ffn.bin" --chunks 4K,16K,64K,256K,1M --depths 1,4,16,32 \
    --seconds-per-point 0.25 --rounds 1 --out "$out/device"

ckpt_bytes=$(stat -c %s "$model/model.safetensors")
half=$(( ckpt_bytes / 2 ))
bench=("$spike" bench --layout "$bundled" --split-layout "$split" --budget "$half" --predictor "$pred"
       --hot "$hot" --profile "$out/device/device-profile.json" --rows "$rows" --split-rows "$split_rows" --window 5
       --text "$lic/Apache-2.0")

step "5/7 the process's own overhead (the same bench, uncapped)"
# Inside a cgroup limited only by the machine's memory, so the kernel memory the run is charged for (page
# tables, slab, io_uring: counted by the capped run's limit, not by RSS) is measured too. A run at 6.7B whose
# limit left it out thrashed (42,829 major faults) and was OOM-killed in the hybrid row.
memtotal=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 1024 ))
if ! bash scripts/cgroup-run.sh "$memtotal" -- /usr/bin/time -f "%M" -o "$out/overhead.maxrss-kib" \
    "${bench[@]}" --prompt "$prompt" --gen "$gen" --prompts "$prompts" --csv "$cache/$tag-overhead.csv" > "$out/overhead.log" 2>&1; then
    tail -n 5 "$out/overhead.log" >&2
    echo "paper-scale.sh: the uncapped bench failed; its log is $out/overhead.log" >&2
    exit 1
fi
kmem=$(grep -o "kernel memory peak [0-9]* B" "$out/overhead.log" | grep -o "[0-9]*" || echo 0)
rss_over=$(python3 - "$out/overhead.maxrss-kib" "$cache/$tag-overhead.summary.csv" <<'EOF'
import csv, sys
hwm = int(open(sys.argv[1]).read().split()[-1]) * 1024
dram = max(float(r["dram_mib"]) for r in csv.DictReader(open(sys.argv[2]))) * 2**20
print(max(0, int(hwm - dram)))
EOF
)
overhead=$(( rss_over + kmem ))
limit=$(( half + overhead ))
{
    echo "checkpoint $ckpt_bytes B; model budget (50%) $half B"
    echo "uncapped run: peak resident $(( $(cat "$out/overhead.maxrss-kib") * 1024 )) B, kernel memory peak $kmem B; overhead (peak resident over the largest row's model DRAM, plus the kernel memory) $overhead B"
    echo "cgroup limit = budget + overhead = $limit B ($(( limit >> 20 )) MiB)"
} | tee "$out/overhead.txt"

step "6/7 the bench inside the cgroup (limit $(( limit >> 20 )) MiB), $prompts prompts of $prompt tokens, $gen decoded"
bash scripts/cgroup-run.sh "$limit" -- "${bench[@]}" --prompt "$prompt" --gen "$gen" --prompts "$prompts" \
    --csv "$out/bench.csv" 2>&1 | tee "$out/bench.txt"

step "7/7 table3.csv"
python3 scripts/paper-scale-table.py "$out/bench.summary.csv" "$out/bench.txt" "$ckpt_bytes" "$out/table3.csv"
rm -f "$cache/$tag-overhead.csv" "$cache/$tag-overhead.summary.csv"
# The run's files on disk (hard links counted once): the checkpoint, the traces, the predictor, the layouts.
du -scb "$model" "$cache/$tag"-* > "$out/disk.txt"
echo "disk: the run's files in the cache take $(( $(tail -1 "$out/disk.txt" | cut -f1) / 1000000 )) MB ($out/disk.txt)" >&2
step "done; outputs in $out/ (table3.csv, stats.csv, bench.txt, overhead.txt, device/)"

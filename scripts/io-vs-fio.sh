#!/usr/bin/env bash
# Random-read throughput of Spike's io_uring backend against fio on the same file, block size and queue depth
# (O_DIRECT, io_uring, randread, iodepth 32), run side by side. Prints both MiB/s and our share of fio's.
#
# Usage: scripts/io-vs-fio.sh [FILE]   (default results/io/scratch/io-vs-fio.dat; created, 2 GiB, if absent
# or smaller, and reused otherwise). Environment: SIZES (default "4k 32k 128k"), DEPTH (32), RUNTIME (10 s),
# REPS (1: each size alternates fio and spike REPS times and the medians are compared), BACKEND (uring).
set -euo pipefail
cd "$(dirname "$0")/.."
file=${1:-results/io/scratch/io-vs-fio.dat}
sizes=${SIZES:-4k 32k 128k}
depth=${DEPTH:-32}
runtime=${RUNTIME:-10}
reps=${REPS:-1}
backend=${BACKEND:-uring}
spike=${SPIKE:-./target/release/spike}
min_bytes=$((2 << 30))

command -v fio >/dev/null || { echo "io-vs-fio: fio is not installed (apt-get install -y fio)" >&2; exit 1; }
[ -x "$spike" ] || cargo build --release --quiet -p tools

mkdir -p "$(dirname "$file")"
have=$(stat -c %s "$file" 2>/dev/null || echo 0)
if [ "$have" -lt "$min_bytes" ]; then
    echo "io-vs-fio: writing $file (2 GiB of fio's non-zero buffer pattern)"
    fio --name=layout --filename="$file" --size=2G --rw=write --bs=1M --direct=1 --ioengine=io_uring \
        --iodepth=8 --refill_buffers=1 --end_fsync=1 >/dev/null
else
    echo "io-vs-fio: reusing $file ($have bytes)"
fi
echo "io-vs-fio: O_DIRECT for both (the page cache is not used); depth $depth; ${runtime} s per run; $reps rep(s); $(nproc) cores"

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

run_fio() {
    fio --name=randread --filename="$file" --direct=1 --ioengine=io_uring --rw=randread --iodepth="$depth" \
        --bs="$1" --runtime="$runtime" --time_based --output-format=json 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"]/1048576)'
}
run_spike() {
    "$spike" io-bench --file "$file" --backend "$backend" --bs "$1" --depth "$depth" --seconds "$runtime" \
        | sed -n 's/.*MiB\/s=\([0-9.]*\).*/\1/p'
}

printf '%-6s %12s %12s %8s\n' bs fio_MiB/s spike_MiB/s ratio
for bs in $sizes; do
    f_runs=(); s_runs=()
    for rep in $(seq "$reps"); do
        # Alternate which goes first, so that a drift in the shared device's speed hurts neither side.
        if [ $((rep % 2)) -eq 1 ]; then f=$(run_fio "$bs"); s=$(run_spike "$bs"); else s=$(run_spike "$bs"); f=$(run_fio "$bs"); fi
        f_runs+=("$f"); s_runs+=("$s")
    done
    fm=$(printf '%s\n' "${f_runs[@]}" | median)
    sm=$(printf '%s\n' "${s_runs[@]}" | median)
    awk -v bs="$bs" -v f="$fm" -v s="$sm" 'BEGIN { printf "%-6s %12.1f %12.1f %7.1f%%\n", bs, f, s, 100 * s / f }'
    if [ "$reps" -gt 1 ]; then echo "       runs: fio ${f_runs[*]} / spike ${s_runs[*]}" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^[0-9.]+$/) $i = sprintf("%.0f", $i); print }'; fi
done

#!/usr/bin/env bash
# Random-read throughput of Spike's io_uring backend against fio on the same file, block size and queue depth
# (O_DIRECT, io_uring, randread, iodepth 32), run side by side. Prints every repetition and, per block size,
# the medians and our share of fio's.
#
# Usage: scripts/io-vs-fio.sh [FILE]   (default results/io/scratch/io-vs-fio.dat; created, 2 GiB, if absent
# or smaller, and reused otherwise). Environment: SIZES (default "4k 32k 128k"), DEPTH (32), RUNTIME (3 s per
# run), REPS (9), BACKEND (uring), SPIKE (the binary), OUT (also write the report there; default
# results/io/io-vs-fio.txt, OUT= to skip), PRIO (rt or normal; default rt when root and chrt exist).
#
# PRIO=rt runs both fio and spike under `chrt -f 10` (real-time FIFO priority), so that other processes'
# CPU load (compilers on a shared 2-core VM) does not delay the reaping of completions: at normal priority
# under a load average of 9, spike and fio alike lost up to 40% at 4 KiB (about 340 -> 200 MiB/s) and
# measured depth-1 latencies of 68 instead of 39 us. The same priority for both keeps the comparison fair.
#
# Method. The disk of the reference machine (a virtio disk of a cloud VM) switches between speed regimes that
# last seconds (128 KiB random reads run at about 1.1 GiB/s, then for a few seconds at 1.7 to 2 GiB/s), so one
# long run of each side compares regimes, not programs. Instead each repetition runs fio and spike back to
# back for RUNTIME seconds each, in alternating order (fio first on odd repetitions), the block sizes are
# interleaved within a repetition, and the summary compares medians over REPS repetitions; the median of the
# per-repetition ratios (each pair ran within seconds of each other) is printed too. Both sides read the same
# file with the same offset law (uniform random multiples of the block size over the whole file) and a fresh
# seed per run (fio --randseed, spike --seed), so no run re-reads the offsets of the one before and a host-side
# cache of the virtual disk favours neither. fio keeps its default random map (every block once per pass);
# spike draws with replacement: over a 2 GiB file the two cover the same region.
set -euo pipefail
cd "$(dirname "$0")/.."
file=${1:-results/io/scratch/io-vs-fio.dat}
sizes=${SIZES:-4k 32k 128k}
depth=${DEPTH:-32}
runtime=${RUNTIME:-3}
reps=${REPS:-9}
backend=${BACKEND:-uring}
spike=${SPIKE:-${CARGO_TARGET_DIR:-./target}/release/spike}
out=${OUT-results/io/io-vs-fio.txt}
if [ -z "${PRIO:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v chrt >/dev/null; then PRIO=rt; else PRIO=normal; fi
fi
case "$PRIO" in
    rt) pre=(chrt -f 10) ;;
    normal) pre=() ;;
    *) echo "io-vs-fio: PRIO must be rt or normal" >&2; exit 1 ;;
esac
min_bytes=$((2 << 30))

command -v fio >/dev/null || { echo "io-vs-fio: fio is not installed (apt-get install -y fio)" >&2; exit 1; }
[ -x "$spike" ] || cargo build --release --quiet -p tools

mkdir -p "$(dirname "$file")"
have=$(stat -c %s "$file" 2>/dev/null || echo 0)
if [ "$have" -lt "$min_bytes" ]; then
    echo "io-vs-fio: writing $file (2 GiB of fio's non-zero buffer pattern)" >&2
    fio --name=layout --filename="$file" --size=2G --rw=write --bs=1M --direct=1 --ioengine=io_uring \
        --iodepth=8 --refill_buffers=1 --end_fsync=1 >/dev/null
fi
file_bytes=$(stat -c %s "$file")

report=$(mktemp)
trap 'rm -f "$report"' EXIT
say() { echo "$*" | tee -a "$report"; }

say "io-vs-fio: $(date -u +%Y-%m-%dT%H:%M:%SZ) file $file ($file_bytes bytes); O_DIRECT for both (the page cache is not used)"
say "io-vs-fio: fio $(fio --version) --direct=1 --ioengine=io_uring --rw=randread --iodepth=$depth; spike io-bench --backend $backend --depth $depth"
say "io-vs-fio: $reps repetitions x ${runtime} s per run; priority $PRIO ${pre[*]:-}; $(nproc) cores; load average at start $(cut -d' ' -f1-3 /proc/loadavg)"

run_fio() { # bs seed
    "${pre[@]}" fio --name=randread --filename="$file" --direct=1 --ioengine=io_uring --rw=randread --iodepth="$depth" \
        --bs="$1" --randseed="$2" --runtime="$runtime" --time_based --output-format=json 2>/dev/null \
        | python3 -c 'import json,sys; print("%.1f" % (json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"]/1048576))'
}
run_spike() { # bs seed
    "${pre[@]}" "$spike" io-bench --file "$file" --backend "$backend" --bs "$1" --depth "$depth" --seconds "$runtime" \
        --seed "$2" | sed -n 's/.*MiB\/s=\([0-9.]*\).*/\1/p'
}
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

declare -A F S R
say "$(printf '%-4s %-6s %10s %12s %8s %6s' rep bs fio_MiB/s spike_MiB/s ratio load)"
for rep in $(seq "$reps"); do
    for bs in $sizes; do
        seed=$((1000 * rep + ${#bs} + RANDOM))
        if [ $((rep % 2)) -eq 1 ]; then
            f=$(run_fio "$bs" "$seed"); s=$(run_spike "$bs" "$((seed + 1))")
        else
            s=$(run_spike "$bs" "$((seed + 1))"); f=$(run_fio "$bs" "$seed")
        fi
        r=$(awk -v f="$f" -v s="$s" 'BEGIN { printf "%.4f", s / f }')
        F[$bs]+="$f "; S[$bs]+="$s "; R[$bs]+="$r "
        say "$(awk -v rep="$rep" -v bs="$bs" -v f="$f" -v s="$s" -v r="$r" -v l="$(cut -d' ' -f1 /proc/loadavg)" \
            'BEGIN { printf "%-4s %-6s %10.1f %12.1f %7.1f%% %6s", rep, bs, f, s, 100 * r, l }')"
    done
done

say ""
say "$(printf '%-6s %14s %16s %16s %18s' bs fio_median spike_median ratio_of_medians median_of_ratios)"
for bs in $sizes; do
    fm=$(tr ' ' '\n' <<<"${F[$bs]}" | grep . | median)
    sm=$(tr ' ' '\n' <<<"${S[$bs]}" | grep . | median)
    rm_=$(tr ' ' '\n' <<<"${R[$bs]}" | grep . | median)
    say "$(awk -v bs="$bs" -v f="$fm" -v s="$sm" -v r="$rm_" \
        'BEGIN { printf "%-6s %14.1f %16.1f %15.1f%% %17.1f%%", bs, f, s, 100 * s / f, 100 * r }')"
done
say "io-vs-fio: load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$out" ]; then
    mkdir -p "$(dirname "$out")"
    cp "$report" "$out.tmp" && mv "$out.tmp" "$out"
    echo "wrote $out"
fi

#!/usr/bin/env bash
# What checking flash reads against the layout's checksum table costs (issue 18: at most 3% of flash decode
# time). `spike bench --layout` runs with the check (the default) and without it (--no-verify-reads), the two
# alternating in ABBA order for ROUNDS rounds, so that a drifting machine or disk weighs on both alike. Per run
# and row: the median decode time per token (`total_ms` of the bench summary). Printed: every run, then per
# row the median over rounds with and without the check and their ratio, beside the check's own time
# (`verify_ms`, measured inside the runs with the check, as a share of their decode time). The ratio is the
# cost; the check's own time is an upper bound of it: with io_uring, the records of a chunk of a run are
# checked as the chunk arrives, while the rest of the layer's reads are in flight, so part of it is hidden.
#
# Usage: scripts/verify-cost.sh [--layout DIR] [--rounds 5] [--rows naive] [--backend uring] [--prompt 32]
#                               [--gen 64] [--prompts 1] [--out DIR] [--spike BIN] [-- EXTRA BENCH ARGS]
# Without --layout, the default model is converted (once) to $SPIKE_CACHE_DIR/layouts/smol-verify-cost.spike.
# The naive row reads every record of every layer per token, so it checks the most bytes per token: the worst
# case. Outputs (bench CSVs, summary.csv) go to --out, by default a new folder under ${TMPDIR:-/tmp}.
# Run it on a quiet machine: the ratio is what counts, and other processes on the cores blur it.
set -euo pipefail
cd "$(dirname "$0")/.."

spike=./target/release/spike
layout=""
rounds=5
rows=naive
backend=uring
prompt=32
gen=64
prompts=1
out=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --layout) layout=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --rows) rows=$2; shift 2 ;;
        --backend) backend=$2; shift 2 ;;
        --prompt) prompt=$2; shift 2 ;;
        --gen) gen=$2; shift 2 ;;
        --prompts) prompts=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --spike) spike=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "verify-cost.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$rounds" in ''|*[!0-9]*|0) echo "verify-cost.sh: --rounds $rounds is not a positive integer" >&2; exit 2 ;; esac
[ -x "$spike" ] || cargo build --release -p tools
if [ -z "$layout" ]; then
    layout=${SPIKE_CACHE_DIR:-$HOME/.cache/spike}/layouts/smol-verify-cost.spike
    if ! "$spike" verify "$layout" >/dev/null 2>&1; then
        "$spike" fetch-model
        mkdir -p "$(dirname "$layout")"
        "$spike" convert -o "$layout" --force
    fi
fi
[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/spike-verify-cost.XXXXXX")
mkdir -p "$out"
echo "layout $layout, rows $rows, backend $backend, $rounds rounds of --prompts $prompts --prompt $prompt --gen $gen" \
    "${extra[*]:-}; load average $(cut -d' ' -f1-3 /proc/loadavg); outputs in $out"

run() { # run ROUND SETTING: one bench run, with the check (on) or without it (off)
    local flag=()
    [ "$2" = off ] && flag=(--no-verify-reads)
    "$spike" bench --layout "$layout" --rows "$rows" --backend "$backend" --prompt "$prompt" --gen "$gen" \
        --prompts "$prompts" --csv "$out/bench-$2-r$1.csv" "${flag[@]}" "${extra[@]}" >"$out/bench-$2-r$1.txt" 2>&1 \
        || { cat "$out/bench-$2-r$1.txt" >&2; exit 1; }
}
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then order="on off"; else order="off on"; fi
    for setting in $order; do
        run "$r" "$setting"
    done
done

python3 - "$out" "$rounds" <<'EOF'
import csv, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
runs = {}  # (row, setting) -> [(total_ms, verify_ms) per round]
for r in range(1, rounds + 1):
    for setting in ("on", "off"):
        with open(os.path.join(out, f"bench-{setting}-r{r}.summary.csv")) as f:
            for row in csv.DictReader(f):
                runs.setdefault((row["row"], setting), []).append((float(row["total_ms"]), float(row["verify_ms"])))
names = sorted({name for name, _ in runs})
print("\nper run, median decode ms/token (check on | off), and the check's own ms/token (all of it, hidden or not)"
      " in the run with it:")
for name in names:
    for r, ((on, v), (off, _)) in enumerate(zip(runs[(name, "on")], runs[(name, "off")]), 1):
        print(f"  {name:<20} round {r}: {on:9.3f} | {off:9.3f}   check {v:.3f}")
rows = []
print("\n| row | decode ms/token with the check | without | ratio with/without | the check's ms/token (hidden or "
      "not) | its share of decode |")
print("|---|---|---|---|---|---|")
for name in names:
    on = statistics.median(t for t, _ in runs[(name, "on")])
    off = statistics.median(t for t, _ in runs[(name, "off")])
    check = statistics.median(v for _, v in runs[(name, "on")])
    rows.append({"row": name, "rounds": rounds, "on_ms": on, "off_ms": off, "ratio": on / off,
                 "verify_ms": check, "verify_share": check / on})
    print(f"| {name} | {on:.3f} | {off:.3f} | {on / off:.4f} | {check:.3f} | {100 * check / on:.2f}% |")
with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
print("\nbar: at most 3% of flash decode time (ratio <= 1.03); medians over", rounds, "rounds of alternated runs")
EOF

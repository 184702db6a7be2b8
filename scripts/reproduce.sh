#!/usr/bin/env bash
# The main job: set up, then run Spike on the default model end to end: greedy generation, GPL-3 perplexity and
# dense speed; activation traces, thresholds and their statistics (scripts/traces.sh); then the flash loop under
# a DRAM budget inside a memory cgroup, with the predictor (scripts/flash-budget.sh), and what a perfect
# predictor would read (scripts/flash-bound.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
spike=./target/release/spike
out=results/reproduce
mkdir -p "$out"
# The machine beside the numbers.
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
flags=$(grep -o -w -E 'avx2|avx512f|avx512_vnni|avx512vnni' /proc/cpuinfo | sort -u | tr '\n' ' ')
cat > "$out/machine.json" <<JSON
{"cpu": "$cpu", "cores": $(nproc), "memory_kib": $(awk '/MemTotal/ {print $2}' /proc/meminfo),
 "kernel": "$(uname -r)", "simd": "${flags% }", "rustc": "$(rustc --version)", "commit": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"}
JSON
echo "== generate"
$spike generate -p "The capital of France is" -n 8 --temp 0 --format json | tee "$out/generate.json"
echo "== perplexity on /usr/share/common-licenses/GPL-3 (llama.cpp: 18.35)"
$spike perplexity -f /usr/share/common-licenses/GPL-3 -c 512 --json "$out/perplexity.json"
echo "== bench (dense, 2 threads)"
$spike --threads 2 bench --csv "$out/bench-dense.csv"
echo "== traces, thresholds, statistics, oracle perplexity (scripts/traces.sh)"
SPIKE=$spike bash scripts/traces.sh
echo "== flash loop under a DRAM budget (scripts/flash-budget.sh)"
SPIKE=$spike bash scripts/flash-budget.sh
echo "== what a perfect predictor would read, and how long it takes (scripts/flash-bound.sh)"
SPIKE=$spike bash scripts/flash-bound.sh
echo "outputs in $out/, results/traces/, results/flash/ (bound/ for the bound)"

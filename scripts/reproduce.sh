#!/usr/bin/env bash
# The main job: set up, then run Spike on the default model. For now this is the foundation's check (greedy
# generation, GPL-3 perplexity, dense speed); the flash experiments join it as they land.
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
echo "outputs in $out/"

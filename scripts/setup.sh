#!/usr/bin/env bash
# Installs what Spike needs on a fresh machine of this project's kind, builds the `spike` binary and fetches
# the default model into the cache (~/.cache/spike, kept between runs). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

pip_install() {
    python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}

if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
    echo "setup: installing python3 and pip with apt-get"
    apt-get update -qq && apt-get install -y -qq python3 python3-pip
fi
# Charts need a TrueType font (plotters draws text with ab_glyph); fio is the yardstick of scripts/io-vs-fio.sh;
# GNU parallel runs sweep shards (docs/sweeps.md, and the sharded test of tools/tests/sweep_cli.rs).
need_apt=()
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
command -v fio >/dev/null || need_apt+=(fio)
command -v parallel >/dev/null || need_apt+=(parallel)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
# The reference test reads the model with llama.cpp's own GGUF package and runs a NumPy forward pass.
python3 -c 'import gguf, numpy' 2>/dev/null || { echo "setup: pip install gguf numpy"; pip_install gguf numpy; }

echo "setup: cargo build --release -p tools"
cargo build --release --quiet -p tools
./target/release/spike fetch-model

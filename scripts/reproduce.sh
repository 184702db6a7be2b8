#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh: packages, the release build, the default model), then run Spike on the
# default model end to end with `spike reproduce`: machine, device profile, dense checks (greedy generation,
# GPL-3 perplexity, dense speed), corpus, trace, thresholds and statistics, predictor, the sweeps of
# experiments/specs/, the flash bench inside a memory cgroup (the process's overhead measured first), the
# charts and REPORT.md, into a new dated folder results/runs/<UTC date-time>/ (committed results are never
# written over). Arguments go to `spike reproduce`:
#
#   bash scripts/reproduce.sh --quick                 # under 15 minutes on 2 cores
#   bash scripts/reproduce.sh --out results/runs/X    # resume an interrupted run (same flags)
#   bash scripts/reproduce.sh --paper-scale           # add the planted OPT run of scripts/paper-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec ./target/release/spike reproduce "$@"

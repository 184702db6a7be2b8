#!/usr/bin/env bash
# Spike's dense speed against llama.cpp's on the same machine, model, threads and token counts, measured
# alternately in one run (issue 17, item 1). Prints every round, the medians and the ratios Spike/llama.cpp for
# prompt processing (pp128) and decode (tg128), for Spike's default activations (q8x2) and `--act-precision q8`.
#
# Usage: scripts/vs-llamacpp.sh [--rounds R] [--threads T] [--reps N] [--jobs J] [--perplexity]
#   --rounds R     alternated rounds (default 3); every round runs llama-bench once and `spike bench` once per
#                  precision, in turn (the order reverses on even rounds, so drift favours no side)
#   --threads T    compute threads of both tools (default 2)
#   --reps N       repetitions inside each invocation (default 5, both tools' default); one invocation gives one
#                  value per test and round: the median of its N repetitions (llama-bench's samples_ts, Spike's
#                  per-repeat CSV rows)
#   --jobs J       parallel compile jobs when llama.cpp has to be built (default 2)
#   --perplexity   also score /usr/share/common-licenses/GPL-3 at context 512 with llama-perplexity and
#                  `spike perplexity` (both precisions)
#
# llama.cpp comes from the source the PyPI package llama-cpp-python==0.3.8 ships (its sdist vendors llama.cpp
# in vendor/llama.cpp; the newer 0.3.36 dies with SIGILL in its AMX kernel on the Intel hosts). It is built
# once per machine (native CPU flags, Release, static, only llama-bench and llama-perplexity) into
# $SPIKE_CACHE_DIR/llama.cpp/0.3.8/ (default ~/.cache/spike/llama.cpp/0.3.8/, the cache the default model
# uses), outside the work tree, and reused afterwards; it is rebuilt when the CPU model or flags differ from
# the ones it was built for (a native build can die with SIGILL on another CPU). scripts/setup.sh runs first
# (spike binary, default model).
#
# Outputs go to a new folder results/vs-llamacpp/<UTC date-time>/ (an earlier run is never overwritten):
#   raw.csv          tool,precision,test,round,tokens_per_s (one row per tool, precision, test and round)
#   summary.md       every round, the medians, the ratios Spike/llama.cpp (of the medians, and the median of the
#                    per-round ratios), the machine and versions
#   machine.json     CPU model, cores, SIMD/AMX flags, versions, settings, load average at start and end
#   perplexity.csv   with --perplexity: tool,precision,ppl,stderr
#   raw/             each invocation's own output (llama-bench JSON, spike bench CSV, logs)
# llama-bench reports the commit and build number of the build-info the sdist ships (7841fc7, build number 1: a
# shallow clone's count, not llama.cpp's bNNNN release number); summary.md also names the full commit from
# llama-cpp-python's changelog.
# Numbers taken while other processes compete for the cores are not measurements: check the load averages in
# machine.json. Contention hurts llama.cpp far more than Spike (it meets its threads at an OpenMP barrier after
# every operation): in a smoke run at nice 19 under a load average of 7-9 on a 2-core host its decode fell to
# 4.8 tok/s, against the 192 that issue 17 reports on an idle AMD EPYC host of the same kind.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON=0.3.8
PROMPT=128
GEN=128
PPL_TEXT=/usr/share/common-licenses/GPL-3
PPL_CTX=512
spike=./target/release/spike

die() { echo "vs-llamacpp: error: $*" >&2; exit 1; }
say() { echo "vs-llamacpp: $*"; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

rounds=3 threads=2 reps=5 jobs=2 perplexity=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=${2:-}; shift 2 || die "--rounds needs a value" ;;
        --threads) threads=${2:-}; shift 2 || die "--threads needs a value" ;;
        --reps) reps=${2:-}; shift 2 || die "--reps needs a value" ;;
        --jobs) jobs=${2:-}; shift 2 || die "--jobs needs a value" ;;
        --perplexity) perplexity=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
for v in rounds threads reps jobs; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--$v must be a positive integer, not '${!v}'"
done
[ "$perplexity" = 0 ] || [ -r "$PPL_TEXT" ] || die "--perplexity needs $PPL_TEXT, which is not readable"

# The cache the default model lives in (spike_flash::model::fetch::cache_dir), so llama.cpp sits beside it.
if [ -n "${SPIKE_CACHE_DIR:-}" ]; then cache=$SPIKE_CACHE_DIR
elif [ -n "${XDG_CACHE_HOME:-}" ]; then cache=$XDG_CACHE_HOME/spike
else cache=$HOME/.cache/spike
fi
llama_dir=$cache/llama.cpp/$LLAMA_CPP_PYTHON
llama_bench=$llama_dir/bin/llama-bench
llama_ppl=$llama_dir/bin/llama-perplexity

cpu_model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
cpu_flags=$(grep -m1 '^flags' /proc/cpuinfo | sed 's/^flags[[:space:]]*: *//')
[ -n "$cpu_model" ] || cpu_model=unknown
# What a native build depends on: the CPU model and its flags.
cpu_signature=$(printf '%s\n%s\n' "$cpu_model" "$cpu_flags" | sha256sum | cut -c1-16)
if grep -qw amx_tile <<<"$cpu_flags"; then amx=yes; else amx=no; fi

# ---- 1. Spike: binary and default model ----------------------------------------------------------------------
say "running scripts/setup.sh (spike binary, default model)"
bash scripts/setup.sh
[ -x "$spike" ] || die "scripts/setup.sh did not leave $spike"
fetched=$("$spike" fetch-model 2>&1) || die "spike fetch-model failed: $fetched"
model=$(sed -n 's/^.*verified\(:\| at\) //p' <<<"$fetched" | tail -1)
[ -f "$model" ] || die "could not find the default model's path in the output of 'spike fetch-model': $fetched"

# ---- 2. llama.cpp: build once per machine --------------------------------------------------------------------
llama_ok() {
    [ -x "$llama_bench" ] && [ -x "$llama_ppl" ] && [ -f "$llama_dir/build.json" ] \
        && grep -q "\"cpu_signature\": \"$cpu_signature\"" "$llama_dir/build.json"
}

build_llama() {
    local need=() tmp sdist src t0 seconds vendored
    command -v cmake >/dev/null || need+=(cmake)
    { command -v g++ >/dev/null && command -v make >/dev/null; } || need+=(build-essential)
    if [ ${#need[@]} -gt 0 ]; then
        command -v apt-get >/dev/null || die "${need[*]} missing and apt-get not available: install them and rerun"
        say "apt-get install ${need[*]}"
        apt-get update -qq && apt-get install -y -qq "${need[@]}" || die "apt-get install ${need[*]} failed"
    fi
    mkdir -p "$cache/llama.cpp"
    tmp=$(mktemp -d "$cache/llama.cpp/.build-$LLAMA_CPP_PYTHON-XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    t0=$(date +%s)
    say "downloading the llama-cpp-python==$LLAMA_CPP_PYTHON sdist (it vendors llama.cpp)"
    # --no-binary names the one package: with :all: pip also builds the sdist's build dependencies from source
    # (cmake among them) just to read the package's metadata.
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$tmp/dl" || die "pip download of llama-cpp-python==$LLAMA_CPP_PYTHON failed"
    sdist=$(ls "$tmp"/dl/llama_cpp_python-"$LLAMA_CPP_PYTHON".tar.gz 2>/dev/null) \
        || die "pip did not leave llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz (it left: $(ls "$tmp/dl"))"
    tar -xzf "$sdist" -C "$tmp"
    src=$tmp/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp
    [ -f "$src/CMakeLists.txt" ] || die "the sdist has no vendor/llama.cpp/CMakeLists.txt"
    # The llama.cpp commit the package vendors, as its changelog names it.
    vendored=$(sed -n "/^## \[$LLAMA_CPP_PYTHON\]/,/^## \[/p" "$tmp/llama_cpp_python-$LLAMA_CPP_PYTHON/CHANGELOG.md" \
        | grep -o -m1 'llama\.cpp@[0-9a-f]*' | cut -d@ -f2 || true)
    say "building llama-bench and llama-perplexity (llama.cpp ${vendored:-commit unknown}; Release, native, -j$jobs; log $llama_dir.build.log)"
    {
        cmake -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
            -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=ON \
            && cmake --build "$tmp/build" --config Release -j "$jobs" --target llama-bench llama-perplexity
    } >"$llama_dir.build.log" 2>&1 || { tail -n 30 "$llama_dir.build.log" >&2; die "llama.cpp build failed (full log: $llama_dir.build.log)"; }
    seconds=$(( $(date +%s) - t0 ))
    rm -rf "$llama_dir"
    mkdir -p "$llama_dir/bin"
    cp "$tmp/build/bin/llama-bench" "$tmp/build/bin/llama-perplexity" "$llama_dir/bin/"
    mv "$llama_dir.build.log" "$llama_dir/build.log"
    python3 - "$llama_dir/build.json" <<PY
import json, sys
json.dump({"llama_cpp_python": "$LLAMA_CPP_PYTHON", "vendored_commit": "$vendored",
           "cmake": "$(cmake --version | head -1)", "compiler": "$(g++ --version | head -1)",
           "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "build_seconds": $seconds, "jobs": $jobs,
           "cpu": """$cpu_model""", "cpu_signature": "$cpu_signature"},
          open(sys.argv[1], "w"), indent=1)
PY
    rm -rf "$tmp"
    trap - EXIT
    say "built in ${seconds} s into $llama_dir/bin/"
}

mkdir -p "$cache/llama.cpp"
exec 9>"$cache/llama.cpp/.lock-$LLAMA_CPP_PYTHON"
flock 9 # one build at a time per cache
if llama_ok; then
    say "reusing llama.cpp from $llama_dir/bin/ (built $(python3 -c 'import json,sys; b=json.load(open(sys.argv[1])); print(b["built_at"], "in", b["build_seconds"], "s")' "$llama_dir/build.json"))"
else
    [ -e "$llama_dir/build.json" ] && say "the llama.cpp build in $llama_dir was made for another CPU (or is incomplete): rebuilding"
    build_llama
fi
flock -u 9
llama_ok || die "llama.cpp is not usable in $llama_dir"

# ---- 3. Output folder ------------------------------------------------------------------------------------------
mkdir -p results/vs-llamacpp
out=results/vs-llamacpp/$(date -u +%Y-%m-%dT%H%M%SZ)
mkdir "$out" 2>/dev/null || die "$out already exists (an earlier run this second?); not overwriting it"
mkdir "$out/raw"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
spike_commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$spike_commit" != unknown ] && ! git diff --quiet HEAD -- 2>/dev/null; then spike_commit+="-dirty"; fi
echo "tool,precision,test,round,tokens_per_s" >"$out/raw.csv"

say "CPU: $cpu_model, $(nproc) cores, AMX: $amx; model $model"
say "llama.cpp from llama-cpp-python==$LLAMA_CPP_PYTHON; spike $spike_commit; $threads threads, pp$PROMPT and tg$GEN, $reps reps per invocation, $rounds round(s)"
say "load average at start: $load_start"

# Appends one invocation's medians (per test) to raw.csv and prints them. Args: tool precision round file.
record() {
    python3 - "$@" "$out/raw.csv" "$PROMPT" "$GEN" <<'PY'
import csv, json, statistics, sys
tool, precision, rnd, path, raw, prompt, gen = sys.argv[1:]
rows = {}
if tool == "llama.cpp":
    for t in json.load(open(path)):
        test = f"pp{t['n_prompt']}" if t["n_gen"] == 0 else f"tg{t['n_gen']}"
        rows[test] = statistics.median(t["samples_ts"])
else:
    per = {}
    for r in csv.DictReader(open(path)):
        per.setdefault(f"{r['test']}{r['tokens']}", []).append(float(r["tokens_per_s"]))
    rows = {k: statistics.median(v) for k, v in per.items()}
want = [f"pp{prompt}", f"tg{gen}"]
missing = [w for w in want if w not in rows]
if missing:
    sys.exit(f"vs-llamacpp: error: {path} has no {', '.join(missing)} result")
with open(raw, "a", newline="") as f:
    w = csv.writer(f)
    for test in want:
        w.writerow([tool, precision, test, rnd, f"{rows[test]:.2f}"])
print("  " + ", ".join(f"{t} {rows[t]:.1f} tok/s" for t in want))
PY
}

run_llama() { # round
    local f=$out/raw/llama.cpp-round$1.json
    say "round $1/$rounds: llama.cpp pp$PROMPT + tg$GEN ($reps reps) ..."
    "$llama_bench" -m "$model" -t "$threads" -p "$PROMPT" -n "$GEN" -r "$reps" -o json >"$f" 2>"$f.log" \
        || { tail -n 20 "$f.log" >&2; die "llama-bench failed (log $f.log)"; }
    record llama.cpp native "$1" "$f"
}
run_spike() { # round precision
    local f=$out/raw/spike-$2-round$1.csv
    say "round $1/$rounds: spike $2 pp$PROMPT + tg$GEN ($reps reps) ..."
    "$spike" --threads "$threads" --act-precision "$2" bench -m "$model" --prompt "$PROMPT" --gen "$GEN" \
        --reps "$reps" --csv "$f" >"$f.log" 2>&1 \
        || { tail -n 20 "$f.log" >&2; die "spike bench failed (log $f.log)"; }
    record spike "$2" "$1" "$f"
}

# ---- 4. Alternated rounds --------------------------------------------------------------------------------------
for r in $(seq "$rounds"); do
    order=(llama q8x2 q8)
    [ $((r % 2)) -eq 1 ] || order=(q8 q8x2 llama)
    for who in "${order[@]}"; do
        if [ "$who" = llama ]; then run_llama "$r"; else run_spike "$r" "$who"; fi
    done
done

# ---- 5. Perplexity -----------------------------------------------------------------------------------------------
if [ "$perplexity" = 1 ]; then
    echo "tool,precision,ppl,stderr" >"$out/perplexity.csv"
    say "perplexity: llama.cpp on $PPL_TEXT, context $PPL_CTX ..."
    "$llama_ppl" -m "$model" -f "$PPL_TEXT" -c "$PPL_CTX" -t "$threads" >"$out/raw/llama.cpp-perplexity.log" 2>&1 \
        || { tail -n 20 "$out/raw/llama.cpp-perplexity.log" >&2; die "llama-perplexity failed (log $out/raw/llama.cpp-perplexity.log)"; }
    est=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\) +\/- \([0-9.]*\).*/\1,\2/p' "$out/raw/llama.cpp-perplexity.log" | tail -1)
    [ -n "$est" ] || die "no 'Final estimate' line in $out/raw/llama.cpp-perplexity.log"
    echo "llama.cpp,native,$est" >>"$out/perplexity.csv"
    say "  llama.cpp: PPL ${est%,*} +/- ${est#*,}"
    for p in q8x2 q8; do
        say "perplexity: spike $p on $PPL_TEXT, context $PPL_CTX ..."
        j=$out/raw/spike-$p-perplexity.json
        "$spike" --threads "$threads" --act-precision "$p" perplexity -m "$model" -f "$PPL_TEXT" -c "$PPL_CTX" \
            --json "$j" >"$j.log" 2>&1 || { tail -n 20 "$j.log" >&2; die "spike perplexity failed (log $j.log)"; }
        est=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["result"]; print("%.4f,%.5f" % (r["ppl"], r["stderr"]))' "$j")
        echo "spike,$p,$est" >>"$out/perplexity.csv"
        say "  spike $p: PPL ${est%,*} +/- ${est#*,}"
    done
fi

# ---- 6. Machine, versions, summary -------------------------------------------------------------------------------
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$out" "$llama_dir/build.json" <<PY
import csv, json, os, statistics, sys
out, build_json = sys.argv[1], sys.argv[2]
build = json.load(open(build_json))
bench = json.load(open(os.path.join(out, "raw", "llama.cpp-round1.json")))[0]
spike_rows = list(csv.DictReader(open(os.path.join(out, "raw", "spike-q8x2-round1.csv"))))
flags = """$cpu_flags""".split()
simd = [f for f in flags if f.startswith(("avx2", "avx512", "amx", "fma", "f16c")) or f in ("avx_vnni",)]
machine = {
    "cpu": """$cpu_model""", "cores": int("$(nproc)"), "amx": "$amx" == "yes", "simd_flags": simd, "flags": " ".join(flags),
    "memory_kib": int("$(awk '/MemTotal/ {print $2}' /proc/meminfo)"), "kernel": "$(uname -r)",
    "llama_cpp": {"llama_cpp_python": build["llama_cpp_python"], "vendored_commit": build["vendored_commit"],
                  "build_commit": bench["build_commit"], "build_number": bench["build_number"],
                  "cpu_info": bench.get("cpu_info"), "backends": bench.get("backends"),
                  "compiler": build["compiler"], "built_at": build["built_at"], "build_seconds": build["build_seconds"]},
    "spike": {"commit": "$spike_commit", "version": "$("$spike" --version)", "isa": spike_rows[0]["isa"],
              "rustc": "$(rustc --version 2>/dev/null || echo unknown)"},
    "model": "$model", "threads": $threads, "prompt": $PROMPT, "gen": $GEN, "reps": $reps, "rounds": $rounds,
    "nice": int("$(nice)"), "load_average_start": "$load_start", "load_average_end": "$load_end",
    "date_utc": os.path.basename(out),
}
json.dump(machine, open(os.path.join(out, "machine.json"), "w"), indent=1)

rows = list(csv.DictReader(open(os.path.join(out, "raw.csv"))))
rounds = sorted({int(r["round"]) for r in rows})
tests = ["pp$PROMPT", "tg$GEN"]
series = [("llama.cpp", "native"), ("spike", "q8x2"), ("spike", "q8")]
val = {(r["tool"], r["precision"], r["test"], int(r["round"])): float(r["tokens_per_s"]) for r in rows}
med = {(t, p, test): statistics.median(val[(t, p, test, k)] for k in rounds) for t, p in series for test in tests}
lines = [f"# Spike against llama.cpp, {machine['date_utc']}", "",
         f"CPU {machine['cpu']}, {machine['cores']} cores, AMX: {'yes' if machine['amx'] else 'no'}; "
         f"{machine['threads']} threads; default model ({os.path.basename(machine['model'])}); "
         f"{machine['reps']} reps per invocation, {len(rounds)} alternated round(s).  ",
         f"llama.cpp: llama-cpp-python=={build['llama_cpp_python']}'s vendored source, llama-bench reports build "
         f"{bench['build_commit']} ({bench['build_number']}); changelog commit {build['vendored_commit'] or 'unknown'}.  ",
         f"Spike {machine['spike']['commit']} ({machine['spike']['isa']}).  ",
         f"Load average at start {machine['load_average_start']}, at end {machine['load_average_end']}; nice {machine['nice']}.", "",
         "Tokens/s; each round's value is the median of its invocation's repetitions.", "",
         "| tool | precision | test | " + " | ".join(f"round {k}" for k in rounds) + " | median | Spike/llama.cpp |",
         "|---|---|---|" + "---:|" * len(rounds) + "---:|---:|"]
for test in tests:
    for t, p in series:
        ratio = "" if t == "llama.cpp" else f"{med[(t, p, test)] / med[('llama.cpp', 'native', test)]:.2f}x"
        lines.append(f"| {t} | {p} | {test} | " + " | ".join(f"{val[(t, p, test, k)]:.1f}" for k in rounds)
                     + f" | {med[(t, p, test)]:.1f} | {ratio} |")
lines += ["", "Ratios Spike/llama.cpp: of the medians, and the median of the per-round ratios (each round's pair ran back to back).", "",
          "| precision | test | ratio of medians | median of round ratios |", "|---|---|---:|---:|"]
for p in ("q8x2", "q8"):
    for test in tests:
        per = [val[("spike", p, test, k)] / val[("llama.cpp", "native", test, k)] for k in rounds]
        lines.append(f"| {p} | {test} | {med[('spike', p, test)] / med[('llama.cpp', 'native', test)]:.2f}x | {statistics.median(per):.2f}x |")
ppl = os.path.join(out, "perplexity.csv")
if os.path.exists(ppl):
    lines += ["", "Perplexity of /usr/share/common-licenses/GPL-3, context $PPL_CTX:", "", "| tool | precision | PPL | +/- |", "|---|---|---:|---:|"]
    lines += [f"| {r['tool']} | {r['precision']} | {float(r['ppl']):.4f} | {float(r['stderr']):.4f} |" for r in csv.DictReader(open(ppl))]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
say "load average at end: $load_end"
say "outputs in $out/ (raw.csv, summary.md, machine.json$([ "$perplexity" = 1 ] && echo ", perplexity.csv"), raw/)"

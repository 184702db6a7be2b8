#!/usr/bin/env bash
# Issue 18's reproductions (findings 1, 2, 4 and 5), run against a `spike` binary as a new user would run them.
# Each case prints one line: PASS or FAIL, the case, the exit status, and the first line of standard error.
# A case passes when the command exits non-zero by status (not by a signal, not by an abort), its message names
# what it must name (the flag, the file), and nothing is left behind. Finding 4 runs TRIALS trials of two
# concurrent converts of one output and tallies them (one layout and one refusal each time, the layout
# verified). Finding 5: a convert killed by SIGKILL (its partial directory removed by the next run, which says
# so), a convert and a synth interrupted by SIGTERM and SIGINT (each removes its own partial output, says so in
# one line and exits 128 + the signal), `synth` on a full disk (a 16 MiB tmpfs; needs root, skipped otherwise), and a
# model file and a layout's ffn.bin truncated while `generate` maps them.
#
# Usage: scripts/reliability-repro.sh [--spike BIN] [--model GGUF] [--trials 20] [--scratch DIR]
# Defaults: ./target/release/spike, the fetched default model, 20 trials, a new folder under ${TMPDIR:-/tmp}
# (removed at the end). Heavy: about 25 conversions of the default model; run it at nice 19 on a shared machine.
set -uo pipefail
cd "$(dirname "$0")/.."

spike=./target/release/spike
model="${SPIKE_CACHE_DIR:-$HOME/.cache/spike}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
trials=20
scratch=""
while [ $# -gt 0 ]; do
    case "$1" in
        --spike) spike="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --trials) trials="$2"; shift 2 ;;
        --scratch) scratch="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
spike="$(realpath "$spike")"
[ -f "$model" ] || { echo "no model at $model: run spike fetch-model" >&2; exit 2; }
if [ -z "$scratch" ]; then
    scratch="$(mktemp -d "${TMPDIR:-/tmp}/spike-repro.XXXXXX")"
    trap 'rm -rf "$scratch"' EXIT
fi
mkdir -p "$scratch"
cd "$scratch"
echo "spike: $spike ($("$spike" --version))"
echo "model: $model"
echo "scratch: $scratch"

fails=0
# check NAME NEEDLE CMD...: runs CMD; passes when it exits 1..125 and stderr contains NEEDLE.
check() {
    local name="$1" needle="$2"
    shift 2
    "$@" >out.txt 2>err.txt
    local rc=$?
    verdict "$name" "$needle" "$rc"
}
verdict() {
    local name="$1" needle="$2" rc="$3" why=""
    if [ "$rc" -eq 0 ]; then why="exit 0"; elif [ "$rc" -gt 125 ]; then why="signal $((rc - 128))"; fi
    grep -q "panicked" err.txt && why="$why panic"
    grep -qF -- "$needle" err.txt || why="$why no \`$needle\` in the message"
    local line
    line="$(grep -m1 '^error' err.txt || grep -m1 . err.txt)"
    if [ -z "$why" ]; then echo "PASS  $name  exit $rc  $line"
    else echo "FAIL  $name  exit $rc ($why)  $line"; fails=$((fails + 1)); fi
}
# debris DIR: fails when DIR holds partial directories, lock files or temporary files.
debris() {
    local left
    left="$(find "$1" -maxdepth 1 \( -name '*.partial-*' -o -name '*.lock' -o -name '.*.tmp' \) | sort)"
    if [ -n "$left" ]; then echo "FAIL  debris left: $left"; fails=$((fails + 1)); fi
}

echo "== finding 1: sizes from arguments"
check "generate -n 10000000" "-n 10000000" "$spike" --threads 1 generate -m "$model" -p hi -n 10000000
"$spike" convert -m "$model" -o smol.spike >/dev/null 2>&1 || { echo "FAIL  convert"; exit 1; }
check "generate --layout -n 1000000000" "-n 1000000000" "$spike" generate --layout smol.spike -p hi -n 1000000000
check "bench --prompt 100000000" "--prompt 100000000" "$spike" bench -m "$model" --prompt 100000000 --gen 1 --reps 1

echo "== finding 2: arguments that panicked, or were ignored"
check "perplexity -c 0" "-c/--ctx 0" "$spike" perplexity -m "$model" -f /usr/share/common-licenses/Apache-2.0 -c 0
check "generate --budget without --layout" "--budget" "$spike" generate -m "$model" -p hi -n 2 --budget 65%
check "generate --cache without --layout" "--cache" "$spike" generate -m "$model" -p hi -n 2 --cache window:5
head -c 1048576 /dev/urandom >data.bin
check "io-bench --buffer 1" "--buffer 1" "$spike" io-bench --file data.bin --backend pool --bs 4096 --buffer 1
check "calibrate --valid-fraction NaN" "--valid-fraction NaN" \
    "$spike" calibrate none.trace --sparsity 0.5 --valid-fraction NaN -o t.json
debris .

echo "== finding 4: two converts of one output, $trials trials"
good=0
busy=0
exists=0
for t in $(seq 1 "$trials"); do
    rm -rf same.spike
    "$spike" convert -m "$model" -o same.spike --layout split >a.out 2>a.err &
    a=$!
    "$spike" convert -m "$model" -o same.spike --layout bundled >b.out 2>b.err &
    b=$!
    wait $a; ra=$?
    wait $b; rb=$?
    ok=0
    if [ $ra -eq 0 ] && [ $rb -eq 1 ]; then lost=b.err; want=split; ok=1
    elif [ $ra -eq 1 ] && [ $rb -eq 0 ]; then lost=a.err; want=bundled; ok=1; fi
    if [ $ok -eq 1 ] && grep -q "same.spike" "$lost" && grep -q "\"kind\": \"$want\"" same.spike/manifest.json \
        && "$spike" verify same.spike >/dev/null 2>&1; then
        good=$((good + 1))
        if grep -q "another process is writing" "$lost"; then busy=$((busy + 1)); else exists=$((exists + 1)); fi
    else
        echo "FAIL  trial $t: exits $ra $rb; $(head -c 300 a.err) | $(head -c 300 b.err)"
        fails=$((fails + 1))
    fi
    debris .
done
echo "tally: $good of $trials trials gave one layout (verified, of the winner's kind) and one refusal naming the output ($busy refused as busy, $exists as already existing)"

echo "== finding 5: interrupted converts"
for sig in KILL TERM INT; do
    rm -rf int.spike
    # A background job of a script ignores SIGINT unless told otherwise; a terminal's Ctrl-C does not.
    env --default-signal=INT "$spike" convert -m "$model" -o int.spike >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 2000); do [ -d "int.spike.partial-$pid" ] && break; sleep 0.005; done
    sleep 0.1
    if [ ! -d "int.spike.partial-$pid" ]; then echo "FAIL  SIG$sig: no partial directory seen"; fails=$((fails + 1)); continue; fi
    kill -s "$sig" $pid
    wait $pid
    rc=$?
    if [ "$sig" != KILL ]; then
        want=$((128 + $(kill -l "$sig")))
        if [ "$rc" -eq "$want" ] && [ ! -e "int.spike.partial-$pid" ] && [ ! -e int.spike ] && [ ! -e int.spike.lock ]; then
            echo "PASS  convert interrupted by SIG$sig: exit $rc, nothing left"
        else
            echo "FAIL  convert interrupted by SIG$sig: exit $rc (want $want); left: $(ls -d int.spike* 2>/dev/null | tr '\n' ' ')"
            fails=$((fails + 1))
        fi
    fi
    if "$spike" convert -m "$model" -o int.spike >out.txt 2>err.txt && [ ! -e "int.spike.partial-$pid" ]; then
        echo "PASS  convert after SIG$sig (exit $rc): $(grep -m1 "removed" out.txt err.txt || echo 'nothing to remove (the signal handler cleaned up)')"
    else
        echo "FAIL  convert after SIG$sig: $(cat err.txt)"; fails=$((fails + 1))
    fi
    debris .
done

echo "== finding 5: interrupted synths"
for sig in TERM INT; do
    rm -rf ck-int
    env --default-signal=INT "$spike" synth --arch llama --layers 8 --d-model 512 --ffn 2048 --heads 8 --vocab 320 \
        --dtype f32 -o ck-int >/dev/null 2>err.txt &
    pid=$!
    for _ in $(seq 1 2000); do compgen -G "ck-int/.model.safetensors.$pid.*.tmp" >/dev/null && break; sleep 0.005; done
    kill -s "$sig" $pid
    wait $pid
    rc=$?
    want=$((128 + $(kill -l "$sig")))
    left="$(find ck-int -name '*.tmp' -o -name 'config.json' -o -name 'model.safetensors' | head; ls -d ck-int.lock 2>/dev/null)"
    if [ "$rc" -eq "$want" ] && [ -z "$left" ] && grep -q "interrupted by SIG$sig: removed the partial output" err.txt; then
        echo "PASS  synth interrupted by SIG$sig: exit $rc: $(head -n1 err.txt)"
    else
        echo "FAIL  synth interrupted by SIG$sig: exit $rc (want $want); left: $left; $(head -c 300 err.txt)"
        fails=$((fails + 1))
    fi
    rm -rf ck-int
done

echo "== finding 5: synth on a full disk"
if [ "$(id -u)" -eq 0 ] && mkdir -p full && mount -t tmpfs -o size=16m tmpfs full 2>/dev/null; then
    check "synth on a full disk" "No space left on device" "$spike" synth --arch opt --layers 4 --d-model 512 \
        --ffn 2048 --heads 8 --vocab 1000 --dtype f32 -o full/ck
    left="$(find full -name '*.tmp' -o -name '*.partial*' | head)"
    if [ -n "$left" ]; then echo "FAIL  synth left $left"; fails=$((fails + 1)); fi
    umount full
else
    echo "SKIP  synth on a full disk (needs root to mount a small tmpfs)"
fi

echo "== finding 5: files truncated while generate maps them"
# truncated NAME VICTIM CMD...: runs CMD in the background, truncates VICTIM once text has come out.
truncated() {
    local name="$1" victim="$2"
    shift 2
    "$@" >out.txt 2>err.txt &
    local pid=$!
    for _ in $(seq 1 6000); do [ -s out.txt ] && break; sleep 0.005; done
    truncate -s 0 "$victim"
    wait $pid
    verdict "$name" "error: $victim changed size while mapped (SIGBUS at offset" $?
}
cp "$model" m.gguf
truncated "generate -m (GGUF) truncated" m.gguf "$spike" generate -m m.gguf -p hi -n 2000 --ignore-eos
rm -rf t.spike
"$spike" convert -m "$model" -o t.spike >/dev/null 2>&1
truncated "generate --layout --backend mmap, ffn.bin truncated" t.spike/ffn.bin \
    "$spike" generate --layout t.spike --backend mmap -p hi -n 2000 --ignore-eos

echo "== $fails failures"
[ "$fails" -eq 0 ]

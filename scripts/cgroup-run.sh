#!/usr/bin/env bash
# Runs a command inside a memory cgroup (v1) whose limit counts the process's memory and its page cache, the
# way the peers' mmap baselines are measured under a DRAM budget. The cgroup is created, used and removed.
#
#   scripts/cgroup-run.sh LIMIT_BYTES -- command args...
#   scripts/cgroup-run.sh --model-share 0.65 --model FILE -- command args...   (24 MiB + share x model file)
#
# Prints the limit and the peak usage (memory.max_usage_in_bytes), the number of times the limit was hit
# (memory.failcnt), major faults and the peak of kernel memory charged (memory.kmem.max_usage_in_bytes) on stderr; exits with the command's status (137 when the kernel's OOM killer stopped it).
set -euo pipefail

root=/sys/fs/cgroup/memory
limit=""
share=""
model=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --model-share) share="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --) shift; break ;;
        *) limit="$1"; shift ;;
    esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 (LIMIT_BYTES | --model-share S --model FILE) -- command..." >&2; exit 2; }
if [[ -n "$share" ]]; then
    [[ -f "$model" ]] || { echo "$0: --model-share needs --model FILE (not found: '$model')" >&2; exit 2; }
    size=$(stat -c %s "$model")
    limit=$(python3 -c "print(24*1024*1024 + int($share * $size))")
fi
[[ "$limit" =~ ^[0-9]+$ ]] || { echo "$0: limit '$limit' is not a byte count" >&2; exit 2; }
[[ -w "$root" ]] || { echo "$0: $root is not writable (needs root and cgroup v1 memory controller)" >&2; exit 2; }

cg="$root/spike-run-$$"
mkdir "$cg"
cleanup() {
    # Move anything left back to the root group, then remove ours.
    if [[ -f "$cg/cgroup.procs" ]]; then
        while read -r p; do echo "$p" > "$root/cgroup.procs" 2>/dev/null || true; done < "$cg/cgroup.procs"
        rmdir "$cg" 2>/dev/null || true
    fi
}
trap cleanup EXIT
echo "$limit" > "$cg/memory.limit_in_bytes"
# Drop this file's clean page cache so the run starts cold and is charged for what it reads itself.
sync
echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
set +e
bash -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' cgroup-run "$cg" "$@"
status=$?
set -e
peak=$(cat "$cg/memory.max_usage_in_bytes")
fails=$(cat "$cg/memory.failcnt")
# Major faults: pages (the program's code, mapped files) that had to be read back after reclaim; many of them
# mean the run thrashed at the limit. Page-cache reclaim alone (clean pages of files read once) is cheap.
majf=$(awk '$1 == "total_pgmajfault" {print $2}' "$cg/memory.stat")
# Kernel memory charged to the group (page tables, slab, io_uring rings): part of the limit, not of RSS.
kmem=$(cat "$cg/memory.kmem.max_usage_in_bytes" 2>/dev/null || echo 0)
echo "cgroup-run: limit $limit B ($(python3 -c "print(f'{$limit/2**20:.1f}')") MiB), peak $peak B ($(python3 -c "print(f'{$peak/2**20:.1f}')") MiB), limit hit $fails times, $majf major faults, exit $status, kernel memory peak $kmem B" >&2
exit $status

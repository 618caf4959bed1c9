# Helpers sourced by the scripts/bench-*.sh drivers (not run on its own).

# Builds a bench target in release and prints the path of its executable (honours CARGO_TARGET_DIR).
# Usage: bench_exe PACKAGE BENCH
bench_exe() {
    cargo bench -q -p "$1" --bench "$2" --no-run --message-format=json |
        python3 -c '
import json, sys
name = sys.argv[1]
exes = [m["executable"] for m in map(json.loads, sys.stdin)
        if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name]
if not exes:
    sys.exit(f"no executable for bench `{name}` in cargo output")
print(exes[-1])' "$2"
}

# Builds a binary target of the root package in release and prints its path. Usage: bin_exe NAME
bin_exe() {
    cargo build -q --release --bin "$1" --message-format=json |
        python3 -c '
import json, sys
name = sys.argv[1]
exes = [m["executable"] for m in map(json.loads, sys.stdin)
        if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name]
if not exes:
    sys.exit(f"no executable for binary `{name}` in cargo output")
print(exes[-1])' "$1"
}

# Runs a command with its stdout to FILE (stderr passed through) and appends `cpu_seconds=USER+SYS` of the command
# (all its threads and children) to FILE; fails when the command fails. Usage: cpu_timed FILE CMD...
cpu_timed() {
    local file=$1
    shift
    local TIMEFORMAT='%U %S'
    { time "$@" >"$file" 2>&3; } 3>&2 2>"$file.time" || { cat "$file.time" >&2; return 1; }
    python3 -c 'import sys; u, s = map(float, open(sys.argv[1]).read().split()[-2:]); print(f"cpu_seconds={u + s:.3f}")' \
        "$file.time" >>"$file"
    rm -f "$file.time"
}

# Installs the Python peers' packages when missing (simpy, numpy, scipy are on PyPI). Usage: need_python MODULE...
need_python() {
    local m
    for m in "$@"; do
        python3 -c "import $m" 2>/dev/null || python3 -m pip install --quiet "$m"
    done
}

#!/usr/bin/env bash
# Side-by-side run of the flow-level fabric simulator and its peer, SimGrid's flow model (issue 10): the same flows
# in both, completion times and wall-clock times per case, and the speed ratio SimGrid / trainlab.
# Needs Debian's python3-simgrid (installed here when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! /usr/bin/python3 -c "import simgrid" 2>/dev/null; then
    if [[ $(id -u) -eq 0 ]]; then
        apt-get install -y -qq python3-simgrid >/dev/null
    else
        echo "python3-simgrid is not installed" >&2
        exit 1
    fi
fi
cargo test --workspace --locked --test fabric_peers -- --nocapture 2>/dev/null |
    grep -E "error|SimGrid / trainlab|worst"

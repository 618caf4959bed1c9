#!/usr/bin/env bash
# Side-by-side runs of the flow-level fabric simulator and its peers (issue 10), the same flows in each: SimGrid's flow
# model (completion times, wall-clock times and the speed ratio per case) and ns-3 packet-level runs (collision
# slowdown per ECMP hash draw, wall-clock ratio). Needs Debian's python3-simgrid and libns3-dev (installed here when
# run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! /usr/bin/python3 -c "import simgrid" 2>/dev/null || ! pkg-config --exists ns3-core 2>/dev/null; then
    if [[ $(id -u) -eq 0 ]]; then
        apt-get install -y -qq python3-simgrid libns3-dev >/dev/null
    else
        echo "python3-simgrid or libns3-dev is not installed" >&2
        exit 1
    fi
fi
cargo test --workspace --locked --test fabric_peers -- --nocapture 2>/dev/null |
    grep -E "error|SimGrid / trainlab|worst|ideal|ECMP draw"

#!/usr/bin/env bash
# A private single-node Slurm on loopback, for testing `trainlab plan --emit slurm` (tests/slurm.rs) and by hand.
#
#   scripts/slurm-test.sh install          # as root: apt-get install slurmctld slurmd munge slurm-client, only
#                                          #   what is absent (quick when installed); .ci/run calls this
#   scripts/slurm-test.sh run [CMD ARGS..] # as root: install if needed, start munged + slurmctld + slurmd in a
#                                          #   temp dir (no systemd, no cgroups), wait until the node is idle,
#                                          #   run CMD with SLURM_CONF exported (default: a one-task test job),
#                                          #   then stop everything (trap) and exit with CMD's status
#
# Exit 77 means "cannot run here" (not root, or the packages cannot be installed): the reason is on stderr, and
# tests treat it as a skip. Every wait is bounded: daemons 60 s each, CMD ${SLURM_TEST_TIMEOUT:-900} s.
# Runs are serialised by a lock (/tmp/trainlab-slurm-test.lock, waited for at most 15 minutes) because the cluster
# uses fixed ports (SLURM_TEST_PORT, default 16817, and the next one).
set -euo pipefail

PKGS=(slurmctld slurmd slurm-client munge)
PORT="${SLURM_TEST_PORT:-16817}"
CMD_TIMEOUT="${SLURM_TEST_TIMEOUT:-900}"

skip() {
    echo "slurm-test: cannot run here: $*" >&2
    exit 77
}

missing_pkgs() {
    local p
    for p in "${PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

install() {
    local need
    need=$(missing_pkgs | tr '\n' ' ')
    if [[ -z "${need// /}" ]]; then
        return 0
    fi
    [[ $(id -u) -eq 0 ]] || skip "not root, and these packages are absent: $need"
    command -v apt-get >/dev/null || skip "no apt-get to install: $need"
    echo "slurm-test: installing $need" >&2
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    if ! timeout 600 apt-get install -y --no-install-recommends $need >&2; then
        timeout 300 apt-get update >&2 || skip "apt-get update failed"
        # shellcheck disable=SC2086
        timeout 600 apt-get install -y --no-install-recommends $need >&2 || skip "apt-get install $need failed"
    fi
    # The Debian packages may start their services where an init system exists; this cluster runs its own daemons.
    command -v systemctl >/dev/null && systemctl stop slurmctld slurmd munge >/dev/null 2>&1 || true
}

# Waits up to $1 seconds for the command in the remaining arguments to succeed.
wait_for() {
    local limit=$1
    shift
    local t=0
    until "$@" >/dev/null 2>&1; do
        ((t++ >= limit * 5)) && return 1
        sleep 0.2
    done
}

node_idle() {
    sinfo -h -N -n localhost -o '%t' | grep -qx idle
}

run() {
    [[ $(id -u) -eq 0 ]] || skip "not root: this script starts its own slurmctld, slurmd and munged as root"
    install
    exec 9>/tmp/trainlab-slurm-test.lock
    flock -w 900 9 || { echo "slurm-test: another private cluster held the lock for 15 minutes" >&2; exit 1; }

    DIR=$(mktemp -d /tmp/trainlab-slurm.XXXXXX)
    chmod 700 "$DIR"
    PIDS=()
    teardown() {
        local rc=$?
        local p
        for p in "${PIDS[@]}"; do
            kill "$p" 2>/dev/null || true
        done
        for p in "${PIDS[@]}"; do
            # Bounded: a daemon that ignores SIGTERM for 10 s gets SIGKILL.
            for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$p" 2>/dev/null || true
        done
        if [[ $rc -ne 0 && $rc -ne 77 ]]; then
            for f in "$DIR"/log/*.log; do
                [[ -f $f ]] && { echo "--- $f (last lines)" >&2; tail -n 20 "$f" >&2; }
            done
        fi
        rm -rf "$DIR"
        exit "$rc"
    }
    trap teardown EXIT
    trap 'exit 130' INT TERM
    mkdir -p "$DIR/munge" "$DIR/log" "$DIR/ctld" "$DIR/spool"

    # munge: a fresh key, its own socket; slurm finds the socket through AuthInfo.
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge/munge.key"
    local sock="$DIR/munge/munge.socket"
    munged -F --force --key-file="$DIR/munge/munge.key" --socket="$sock" \
        --pid-file="$DIR/munge/munged.pid" --seed-file="$DIR/munge/munged.seed" \
        --log-file="$DIR/log/munged.log" >"$DIR/log/munged.out" 2>&1 &
    PIDS+=($!)
    wait_for 60 test -S "$sock" || { echo "slurm-test: munged did not start" >&2; exit 1; }

    local cpus
    cpus=$(nproc)
    cat >"$DIR/slurm.conf" <<EOF
ClusterName=trainlabtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$DIR/slurm.conf"
    slurmctld -D -i -f "$SLURM_CONF" >"$DIR/log/slurmctld.out" 2>&1 &
    PIDS+=($!)
    wait_for 60 scontrol ping || { echo "slurm-test: slurmctld did not answer within 60 s" >&2; exit 1; }
    slurmd -D -N localhost -f "$SLURM_CONF" >"$DIR/log/slurmd.out" 2>&1 &
    PIDS+=($!)
    wait_for 60 node_idle || {
        echo "slurm-test: node localhost not idle within 60 s:" >&2
        sinfo -N >&2 || true
        exit 1
    }
    echo "slurm-test: cluster up (SLURM_CONF=$SLURM_CONF, $cpus CPUs)" >&2

    local rc=0
    if [[ $# -eq 0 ]]; then
        timeout 120 sbatch --wait -o "$DIR/hello.out" --wrap 'echo hello from $SLURM_JOB_ID' >&2 || rc=$?
        [[ $rc -eq 0 ]] && cat "$DIR/hello.out"
    else
        timeout "$CMD_TIMEOUT" "$@" || rc=$?
    fi
    exit "$rc"
}

case "${1:-}" in
install) install ;;
run)
    shift
    [[ "${1:-}" == "--" ]] && shift
    run "$@"
    ;;
*)
    echo "usage: $0 install | run [--] [CMD ARGS...]" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Stop the test cluster started by up.sh: only the daemons it started, found by the pid files it
# keeps under $ANNOTATE_SLURM_DIR (slurmd, slurmctld, slurmdbd, MariaDB, munged). Daemons of the
# same name that something else started are left running.
ROOT=${ANNOTATE_SLURM_DIR:-/tmp/annotate-slurm}
pids=()
for pidfile in "$ROOT/run/slurmd.pid" "$ROOT/run/slurmctld.pid" "$ROOT/run/slurmdbd.pid" \
               "$ROOT/run/mysqld.pid" "$ROOT/munge/munged.pid"; do
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    case "$pid" in ''|*[!0-9]*) continue ;; esac
    kill "$pid" 2>/dev/null && pids+=("$pid")
done
for _ in $(seq 100); do
    alive=0
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null && alive=1
    done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
done
exit 0

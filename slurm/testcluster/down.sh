#!/usr/bin/env bash
# Stop the test cluster started by up.sh (Slurm daemons, slurmdbd, MariaDB, munged).
ROOT=${ANNOTATE_SLURM_DIR:-/tmp/annotate-slurm}
for pidfile in slurmd slurmctld slurmdbd mysqld; do
    [ -s "$ROOT/run/$pidfile.pid" ] && kill "$(cat "$ROOT/run/$pidfile.pid")" 2>/dev/null
done
pkill -x slurmd 2>/dev/null; pkill -x slurmctld 2>/dev/null; pkill -x slurmdbd 2>/dev/null
pkill -f "mariadbd --no-defaults --user=root --datadir=$ROOT/db" 2>/dev/null
pkill -x munged 2>/dev/null
for _ in $(seq 50); do
    pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || pgrep -x slurmdbd >/dev/null || break
    sleep 0.1
done
exit 0

#!/usr/bin/env bash
# A live single-node Slurm cluster with accounting, for tests and for trying the SLURM paths on a
# laptop or CI machine: Debian's slurmctld, slurmd, slurmdbd, munge and MariaDB, started as root
# without systemd, everything under $ANNOTATE_SLURM_DIR (default /tmp/annotate-slurm).
#
#   sudo slurm/testcluster/up.sh          # installs the packages if missing, starts the daemons
#   export SLURM_CONF=/tmp/annotate-slurm/etc/slurm.conf
#   sinfo; sbatch --wrap hostname; sacct
#   sudo slurm/testcluster/down.sh
#
# Environment: ANNOTATE_SLURM_DIR, ANNOTATE_SLURM_DB_PORT (default 3306; MariaDB on 127.0.0.1),
# ANNOTATE_SLURM_CPUS (default: this machine's), ANNOTATE_SLURM_MEM_MB (default 80 % of it).
# Re-running it restarts the daemons with fresh state (job ids start at 1 again).
set -euo pipefail

ROOT=${ANNOTATE_SLURM_DIR:-/tmp/annotate-slurm}
DB_PORT=${ANNOTATE_SLURM_DB_PORT:-3306}
CPUS=${ANNOTATE_SLURM_CPUS:-$(nproc)}
MEM_MB=${ANNOTATE_SLURM_MEM_MB:-$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 8 / 10240 ))}
CLUSTER=annotate
HERE=$(cd "$(dirname "$0")" && pwd)

if [ "$(id -u)" -ne 0 ]; then
    echo "up.sh: run as root (it starts munged, mariadbd and the Slurm daemons)" >&2
    exit 2
fi

# --- packages (never auto-started: the policy-rc.d below refuses service starts during install) ---
missing=()
for package in slurmctld slurmd slurm-client slurmdbd munge mariadb-server; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    [ "$created_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
fi

"$HERE/down.sh" >/dev/null 2>&1 || true
rm -rf "$ROOT"
mkdir -p "$ROOT"/{etc,log,run,state/ctld,state/d,db,munge}

# --- munge: a fresh key, run as the munge user ---
mkdir -p /run/munge /etc/munge
chown munge:munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
chown munge:munge "$ROOT/munge"
su -s /bin/sh munge -c "/usr/sbin/munged --force --pid-file=$ROOT/munge/munged.pid"

# --- MariaDB on 127.0.0.1, data, socket and pid under $ROOT ---
mariadb-install-db --no-defaults --user=root --datadir="$ROOT/db" --auth-root-authentication-method=normal \
    >"$ROOT/log/mariadb-install.log" 2>&1
mariadbd --no-defaults --user=root --datadir="$ROOT/db" --socket="$ROOT/run/mysqld.sock" \
    --pid-file="$ROOT/run/mysqld.pid" --port="$DB_PORT" --bind-address=127.0.0.1 \
    --innodb-buffer-pool-size=16M --key-buffer-size=1M --max-connections=20 \
    >"$ROOT/log/mariadb.log" 2>&1 &
for _ in $(seq 100); do
    mariadb --no-defaults --socket="$ROOT/run/mysqld.sock" -uroot -e "select 1" >/dev/null 2>&1 && break
    sleep 0.1
done
mariadb --no-defaults --socket="$ROOT/run/mysqld.sock" -uroot <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

# --- Slurm configuration ---
cat > "$ROOT/etc/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
StateSaveLocation=$ROOT/state/ctld
SlurmdSpoolDir=$ROOT/state/d
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( MEM_MB / CPUS ))
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
cat > "$ROOT/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$ROOT/log/slurmdbd.log
PidFile=$ROOT/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
chmod 600 "$ROOT/etc/slurmdbd.conf"
export SLURM_CONF="$ROOT/etc/slurm.conf"

# --- daemons ---
slurmdbd
for _ in $(seq 100); do
    sacctmgr -n list cluster >/dev/null 2>&1 && break
    sleep 0.1
done
sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
slurmctld -i
slurmd -N localhost
for _ in $(seq 150); do
    state=$(sinfo -h -o %T 2>/dev/null || true)
    [ "$state" = "idle" ] && break
    sleep 0.2
done
if [ "$state" != "idle" ]; then
    echo "up.sh: the node did not become idle (state: ${state:-none}); logs in $ROOT/log" >&2
    exit 1
fi
echo "Slurm is up: export SLURM_CONF=$SLURM_CONF"

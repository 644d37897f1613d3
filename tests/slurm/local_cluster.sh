#!/usr/bin/env bash
# A throwaway single-node SLURM cluster with accounting, for testing cluster submission on one machine.
#
#   bash tests/slurm/local_cluster.sh start STATE_DIR
#   bash tests/slurm/local_cluster.sh stop  STATE_DIR   # stops exactly the daemons `start` started
#
# Debian 12 packages (slurmctld, slurmd, slurmdbd, munge, mariadb-server), installed with apt-get when
# missing; needs root and a PID 1 that is not systemd (containers, CI sandboxes). State, logs and the
# database live under STATE_DIR. The configs go to /etc/slurm, where every client looks: the Snakemake
# SLURM job step runs `srun` with the SLURM_* variables (SLURM_CONF among them) removed. `start` refuses
# to replace a config it did not write, and `stop` removes the ones it wrote. Accounting (slurmdbd on a
# private MariaDB) is on, because the Snakemake SLURM executor asks `sacct` for job states. cgroup
# plugins do not work in sandboxes: proctrack/linuxproc and task/none are used instead.
set -euo pipefail

command=${1:?usage: local_cluster.sh start|stop STATE_DIR}
STATE_DIR=$(realpath -m "${2:?usage: local_cluster.sh start|stop STATE_DIR}")
PIDS="$STATE_DIR/started.pids"   # "name pid" per daemon this script started; `stop` reads it
CONF_DIR=/etc/slurm
MARK="# written by probes tests/slurm/local_cluster.sh"
PARTITION=debug
CLUSTER=probes-test
DB_PORT=3306
T0=$(date +%s)
log() { printf '[local_cluster %3ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

stop() {
  [ -s "$PIDS" ] || { log "nothing recorded in $PIDS"; return 0; }
  tac "$PIDS" | while read -r name pid; do
    if [ ! -d "/proc/$pid" ]; then log "$name ($pid) already gone"; continue; fi
    # PID reuse guard: the process must still be the daemon that was started
    case "$(cat "/proc/$pid/comm" 2>/dev/null)" in "$name"*) ;; *) log "$name ($pid) is now another process; left alone"; continue;; esac
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    if [ -d "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; log "$name ($pid) killed"; else log "$name ($pid) stopped"; fi
  done
  mv "$PIDS" "$PIDS.stopped"
  for conf in slurm.conf slurmdbd.conf; do
    if head -1 "$CONF_DIR/$conf" 2>/dev/null | grep -qxF "$MARK"; then rm -f "$CONF_DIR/$conf"; fi
  done
}

record_pid() {  # name pidfile
  local pid
  for _ in $(seq 1 100); do [ -s "$2" ] && break; sleep 0.1; done
  [ -s "$2" ] || die "$1 did not write $2"
  pid=$(tr -d ' \n' < "$2")
  echo "$1 $pid" >> "$PIDS"
  log "started $1 (pid $pid)"
}

start() {
  [ "$(id -u)" = 0 ] || die "must run as root (it starts slurmd and munged)"
  mkdir -p "$STATE_DIR"/{run,log,spool/ctld,spool/d,mysql} "$CONF_DIR"
  [ ! -s "$PIDS" ] || die "$PIDS lists daemons already; run stop first"
  local packages=()
  command -v slurmctld >/dev/null || packages+=(slurmctld)
  command -v slurmd >/dev/null || packages+=(slurmd)
  command -v sbatch >/dev/null || packages+=(slurm-client)
  command -v slurmdbd >/dev/null || packages+=(slurmdbd)
  command -v munged >/dev/null || packages+=(munge)
  command -v mariadbd >/dev/null || packages+=(mariadb-server)
  if [ ${#packages[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${packages[*]} and no apt-get to install them"
    log "apt-get install ${packages[*]}"
    apt-get update -q >"$STATE_DIR/log/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}" >>"$STATE_DIR/log/apt.log" 2>&1 \
      || { tail -20 "$STATE_DIR/log/apt.log" >&2; die "apt-get install failed"; }
  fi
  for conf in slurm.conf slurmdbd.conf; do
    [ ! -e "$CONF_DIR/$conf" ] || head -1 "$CONF_DIR/$conf" | grep -qxF "$MARK" \
      || die "$CONF_DIR/$conf exists and was not written by this script: this machine has its own SLURM"
  done
  for port in 6817 6818 6819 "$DB_PORT"; do
    ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || die "port $port is in use: is another cluster or database running?"
  done
  trap 'log "start failed; stopping what was started"; stop' ERR

  # munge: one per machine; started here only when none answers
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running; left as it is"
  else
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    record_pid munged /run/munge/munged.pid
  fi

  local node cpus mem
  node=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') * 9 / 10 ))  # headroom, else the node is INVAL
  getent hosts "$node" >/dev/null || echo "127.0.0.1 $node" >> /etc/hosts
  cat > "$CONF_DIR/slurm.conf" <<CONF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR/spool/ctld
SlurmdSpoolDir=$STATE_DIR/spool/d
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=600
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF

  # accounting: a private MariaDB in STATE_DIR, reached over TCP on 127.0.0.1
  local socket="$STATE_DIR/run/mysqld.sock" password
  password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  mariadb-install-db --user=root --datadir="$STATE_DIR/mysql" --auth-root-authentication-method=socket \
    >"$STATE_DIR/log/mariadb-install.log" 2>&1
  nohup /usr/sbin/mariadbd --user=root --datadir="$STATE_DIR/mysql" --socket="$socket" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --pid-file="$STATE_DIR/run/mariadbd.pid" >"$STATE_DIR/log/mariadbd.log" 2>&1 &
  record_pid mariadbd "$STATE_DIR/run/mariadbd.pid"
  for _ in $(seq 1 100); do mariadb --socket="$socket" -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
  mariadb --socket="$socket" -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
    CREATE DATABASE slurm_acct_db; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  cat > "$CONF_DIR/slurmdbd.conf" <<CONF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$password
StorageLoc=slurm_acct_db
PidFile=$STATE_DIR/run/slurmdbd.pid
LogFile=$STATE_DIR/log/slurmdbd.log
CONF
  chmod 600 "$CONF_DIR/slurmdbd.conf"  # slurmdbd refuses a readable config
  /usr/sbin/slurmdbd
  record_pid slurmdbd "$STATE_DIR/run/slurmdbd.pid"
  for _ in $(seq 1 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
  sacctmgr -i add cluster "$CLUSTER" >/dev/null

  /usr/sbin/slurmctld -i
  record_pid slurmctld "$STATE_DIR/run/slurmctld.pid"
  /usr/sbin/slurmd
  record_pid slurmd "$STATE_DIR/run/slurmd.pid"
  local state=""
  for _ in $(seq 1 100); do
    state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    case "$state" in *drain*|inval*) scontrol update nodename="$node" state=resume 2>/dev/null || true;; esac
    sleep 0.2
  done
  [ "$state" = idle ] || die "node $node is '$state', not idle (see $STATE_DIR/log/slurmctld.log)"
  local job
  job=$(sbatch --parsable --wait -t 1 -o "$STATE_DIR/log/smoke-%j.out" --wrap 'echo smoke-ok')
  grep -q smoke-ok "$STATE_DIR/log/smoke-$job.out" || die "a test job did not run"
  trap - ERR
  log "cluster up: partition $PARTITION on $node ($cpus CPUs, $mem MB)"
}

case "$command" in
  start) start ;;
  stop) stop ;;
  *) die "unknown command '$command' (start or stop)" ;;
esac

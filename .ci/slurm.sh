#!/usr/bin/env bash
# Throwaway single-node SLURM cluster for testing profiles/slurm (CI and developers' machines).
#
#   .ci/slurm.sh start     install the Debian packages if missing, write the config, start the
#                          daemons, run the smoke test (idempotent: a healthy cluster is left alone)
#   .ci/slurm.sh restart   stop, then start from a clean state
#   .ci/slurm.sh smoke     the smoke test alone (srun, sbatch + sacct, the fake GPU)
#   .ci/slurm.sh status    daemons, controller, node, queue; exit 0 only when all are up
#   .ci/slurm.sh stop      cancel leftover jobs, stop every daemon this script started (PID files)
#
# The cluster: one node (this machine, its own CPUs and ~90% of its memory), one partition, one
# fake GPU (gres/gpu backed by a symlink to /dev/null: jobs that ask for --gpus=1 get
# CUDA_VISIBLE_DEVICES=0 and a gres/gpu=1 allocation, not a real device), munge authentication,
# and job accounting in slurmdbd + a private MariaDB (sacct works, which the Snakemake SLURM
# executor needs). Everything it writes lives under $SEQMUX_SLURM_DIR, except /etc/slurm (the
# executor's job steps drop SLURM_CONF, so the config must sit at the default path) and the
# sockets of munge and MariaDB in /run.
#
# Needs root and Debian/Ubuntu (apt-get); meant for throwaway machines (CI, containers, VMs).
# Knobs (environment):
#   SEQMUX_SLURM_DIR        state, logs, PID files           (default /tmp/seqmux-slurm)
#   SEQMUX_SLURM_PARTITION  the one partition, the default   (default main)
#   SEQMUX_SLURM_ACCOUNT    an account with root as member   (default seqmux)
#   SEQMUX_SLURM_GPUS       number of fake GPUs on the node  (default 1; 0 = none)
#   SEQMUX_SLURM_NO_INSTALL 1 = never run apt-get
#   SEQMUX_SLURM_FORCE      1 = overwrite an /etc/slurm/slurm.conf that this script did not write
set -euo pipefail

DIR=${SEQMUX_SLURM_DIR:-/tmp/seqmux-slurm}
PARTITION=${SEQMUX_SLURM_PARTITION:-main}
ACCOUNT=${SEQMUX_SLURM_ACCOUNT:-seqmux}
GPUS=${SEQMUX_SLURM_GPUS:-1}
ETC=/etc/slurm
MARK="# written by seqmux .ci/slurm.sh"
PIDS=$DIR/pids                  # root-owned PID files: slurmctld, slurmd, slurmdbd
MYSQL_DATA=$DIR/mariadb         # private MariaDB data dir (owned by mysql)
MYSQL_PID=$DIR/mariadb-run/mariadbd.pid   # in a dir that mysql may write and all may read
MYSQL_SOCK=/run/mysqld/mysqld.sock   # default socket: slurmdbd's client library finds it
MUNGE_PID=/run/munge/seqmux-munged.pid
PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"

say() { echo "[slurm.sh] $*" >&2; }
die() { echo "[slurm.sh] ERROR: $*" >&2; exit 1; }

# wait_until SECONDS WHAT CMD...: poll CMD every 0.5 s; fail after SECONDS
wait_until() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { say "gave up after ${limit}s waiting for: $what"; return 1; }
    sleep 0.5
  done
}

# PIDs of processes whose command name is $1 (no procps needed)
pids_named() {
  local f
  for f in /proc/[0-9]*/comm; do
    [ "$(cat "$f" 2>/dev/null)" = "$1" ] && { f=${f#/proc/}; echo "${f%/comm}"; }
  done
  return 0
}

# alive PIDFILE [NAME]: the PID file names a running process (called NAME, when given)
alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  [ -z "${2:-}" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# stop_by_pidfile FILE NAME: TERM, up to 20 s, then KILL (only a process called NAME: a stale
# PID file may name a recycled PID); removes the PID file
stop_by_pidfile() {
  local file=$1 name=$2 pid
  [ -e "$file" ] || return 0
  pid=$(cat "$file" 2>/dev/null || true)
  if alive "$file" "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name (pid $pid) ignored TERM for 20 s: KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $name (pid $pid)"
  fi
  rm -f "$file"
}

need_root() {
  [ "$(id -u)" -eq 0 ] && return 0
  if command -v sudo >/dev/null 2>&1; then exec sudo -E bash "$0" "$@"; fi
  die "needs root (apt-get, /etc/slurm, slurmd); run it as root or install sudo"
}

# ---- install --------------------------------------------------------------------------------------

install_packages() {
  local missing="" p added_policy=0
  for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  [ "${SEQMUX_SLURM_NO_INSTALL:-0}" = 1 ] && die "packages missing:$missing (SEQMUX_SLURM_NO_INSTALL=1)"
  command -v apt-get >/dev/null 2>&1 || die "packages missing:$missing, and no apt-get (Debian/Ubuntu only)"
  say "installing:$missing"
  # keep the packages' maintainer scripts from starting services (we start them by hand below)
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
  } >"$DIR/apt.log" 2>&1 || rc=$?
  [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" -eq 0 ] || { tail -20 "$DIR/apt.log" >&2; die "apt-get install failed (log: $DIR/apt.log)"; }
}

# ---- configuration --------------------------------------------------------------------------------

write_config() {
  local host probe cpus realmem node gres=""
  host=$(hostname -s)
  if [ -e "$ETC/slurm.conf" ] && ! grep -qF "$MARK" "$ETC/slurm.conf" && [ "${SEQMUX_SLURM_FORCE:-0}" != 1 ]; then
    die "$ETC/slurm.conf exists and was not written by this script (a real cluster?); set SEQMUX_SLURM_FORCE=1 to overwrite"
  fi
  # the node as slurmd sees it: NodeName=... CPUs=... Boards=... ... RealMemory=...
  probe=$(slurmd -C | head -1)
  cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$probe")
  realmem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$probe")
  [ -n "$cpus" ] && [ -n "$realmem" ] || die "cannot read CPUs / RealMemory from 'slurmd -C': $probe"
  realmem=$((realmem * 9 / 10))   # a node reporting less than its configured memory gets drained
  # keep slurmd -C's socket/core/thread layout, set our address and memory
  node=$(sed -e "s/^NodeName=[^ ]*/NodeName=$host NodeAddr=127.0.0.1/" -e "s/ RealMemory=[0-9]*/ RealMemory=$realmem/" \
    -e 's/ UpTime=.*//' <<<"$probe")

  install -d -m 0755 "$ETC" "$DIR" "$PIDS" "$DIR/log" "$DIR/ctld" "$DIR/spool" "$DIR/gpu"
  : >"$ETC/gres.conf"
  if [ "$GPUS" -gt 0 ]; then
    gres=" Gres=gpu:$GPUS"
    echo "AutoDetect=off" >>"$ETC/gres.conf"
    for i in $(seq 0 $((GPUS - 1))); do
      # slurmd needs a device file per GPU; a symlink to /dev/null named nvidiaN stands in
      # (a missing or regular file drains the node)
      ln -sfn /dev/null "$DIR/gpu/nvidia$i"
      echo "NodeName=$host Name=gpu File=$DIR/gpu/nvidia$i" >>"$ETC/gres.conf"
    done
  fi

  cat >"$ETC/slurm.conf" <<EOF
$MARK: a throwaway single-node test cluster
ClusterName=seqmux
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# no cgroups in containers: track processes through /proc, no CPU binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs that give no memory take 1 GB per CPU, not the whole node
DefMemPerCPU=1000
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdTimeout=60
KillWait=5
# finished jobs stay visible to squeue for 5 min
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
# sacct shows the job comment (the Snakemake executor writes rule_<rule>_wildcards_<...> there)
AccountingStoreFlags=job_comment
GresTypes=gpu
$node$gres State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

  cat >"$ETC/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$PIDS/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=seqmux-test-only
StorageLoc=slurm_acct_db
EOF
  chmod 0600 "$ETC/slurmdbd.conf"   # slurmdbd refuses a config others can read
}

# ---- daemons --------------------------------------------------------------------------------------

munge_works() { munge -n | unmunge; }

start_munge() {
  if alive "$MUNGE_PID" munged; then return 0; fi
  if munge_works >/dev/null 2>&1; then say "munged already running (not ours): using it"; return 0; fi
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge
  chmod 0700 /etc/munge && chmod 0600 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
  wait_until 15 "munged" munge_works || die "munged did not start (see /var/log/munge/munged.log)"
}

mariadb_sql() { mariadb --no-defaults --socket="$MYSQL_SOCK" -uroot -e "$1"; }

start_mariadb() {
  if [ -S "$MYSQL_SOCK" ] && ! alive "$MYSQL_PID" mariadbd && mariadb-admin --no-defaults --socket="$MYSQL_SOCK" ping >/dev/null 2>&1; then
    die "a MariaDB/MySQL server not started by this script answers on $MYSQL_SOCK; stop it first"
  fi
  # a fresh private database at every start (job ids restart at 1 with the wiped controller state)
  rm -rf "$MYSQL_DATA"
  install -d -o mysql -g mysql -m 0750 "$MYSQL_DATA"
  install -d -o mysql -g mysql -m 0755 "$(dirname "$MYSQL_PID")"
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DATA" --auth-root-authentication-method=socket \
    --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || { tail "$DIR/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  # socket only, no TCP port; small buffers; the lock timeout slurmdbd asks for
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DATA" --socket="$MYSQL_SOCK" \
    --pid-file="$MYSQL_PID" --skip-networking --log-error="$DIR/log/mariadb.log" \
    --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
  wait_until 60 "MariaDB" mariadb-admin --no-defaults --socket="$MYSQL_SOCK" ping ||
    { tail "$DIR/log/mariadb.log" >&2; die "MariaDB did not start (log: $DIR/log/mariadb.log)"; }
  wait_until 10 "MariaDB PID file" test -s "$MYSQL_PID" || die "MariaDB wrote no PID file $MYSQL_PID"
  mariadb_sql "CREATE DATABASE slurm_acct_db;
    CREATE USER 'slurm'@'localhost' IDENTIFIED BY 'seqmux-test-only';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurmdbd() {
  /usr/sbin/slurmdbd || die "slurmdbd did not start (log: $DIR/log/slurmdbd.log)"
  wait_until 60 "slurmdbd" sacctmgr -n list cluster ||
    { tail "$DIR/log/slurmdbd.log" >&2; die "slurmdbd does not answer (log: $DIR/log/slurmdbd.log)"; }
}

controller_up() { scontrol ping | grep -q "is UP"; }
node_idle() { [ "$(sinfo -h -N -o %T 2>/dev/null | sort -u)" = idle ]; }

start_slurm_daemons() {
  /usr/sbin/slurmctld || die "slurmctld did not start (log: $DIR/log/slurmctld.log)"
  wait_until 60 "slurmctld" controller_up ||
    { tail "$DIR/log/slurmctld.log" >&2; die "slurmctld does not answer (log: $DIR/log/slurmctld.log)"; }
  /usr/sbin/slurmd -N "$(hostname -s)" || die "slurmd did not start (log: $DIR/log/slurmd.log)"
  if ! wait_until 60 "node idle" node_idle; then
    sinfo -R >&2 || true
    tail -20 "$DIR/log/slurmd.log" >&2
    die "the node did not become idle (logs: $DIR/log/slurmd.log, slurmctld.log)"
  fi
}

# an account with root as a user, so that jobs can name it (-A) as on a real cluster
add_account() {
  sacctmgr -i -Q add account "$ACCOUNT" Description=seqmux-tests Organization=seqmux >/dev/null
  sacctmgr -i -Q add user root Account="$ACCOUNT" >/dev/null
  sacctmgr -n -P list assoc user=root account="$ACCOUNT" format=account | grep -qx "$ACCOUNT" ||
    die "account $ACCOUNT was not created"
}

# ---- commands ------------------------------------------------------------------------------------

ours_running() {
  alive "$PIDS/slurmctld.pid" slurmctld && alive "$PIDS/slurmd.pid" slurmd && alive "$PIDS/slurmdbd.pid" slurmdbd &&
    alive "$MYSQL_PID" mariadbd
}

smoke() {
  local out jid tres
  out=$(timeout 60 srun -N1 -n1 -t 1 -A "$ACCOUNT" hostname) || die "smoke: srun failed"
  [ "$out" = "$(hostname)" ] || [ "$out" = "$(hostname -s)" ] || die "smoke: srun hostname printed '$out'"
  jid=$(sbatch --parsable -t 1 -A "$ACCOUNT" -o /dev/null --wrap "true") || die "smoke: sbatch failed"
  wait_until 60 "sbatch job $jid in sacct as COMPLETED" \
    bash -c "sacct -n -X -P -j $jid -o State | grep -qx COMPLETED" || die "smoke: job $jid not COMPLETED in sacct"
  if [ "$GPUS" -gt 0 ]; then
    out=$(timeout 60 srun -t 1 -A "$ACCOUNT" --gpus=1 printenv CUDA_VISIBLE_DEVICES) || die "smoke: srun --gpus=1 failed"
    [ "$out" = 0 ] || die "smoke: a --gpus=1 job saw CUDA_VISIBLE_DEVICES='$out', expected 0"
    jid=$(sbatch --parsable -t 1 -A "$ACCOUNT" --gpus=1 -o /dev/null --wrap "true")
    wait_until 60 "GPU job $jid in sacct" bash -c "sacct -n -X -P -j $jid -o State | grep -qx COMPLETED" ||
      die "smoke: GPU job $jid not COMPLETED in sacct"
    tres=$(sacct -n -X -P -j "$jid" -o AllocTRES)
    grep -q "gres/gpu=1" <<<"$tres" || die "smoke: GPU job $jid has AllocTRES '$tres', no gres/gpu=1"
  fi
  say "smoke test passed (srun, sbatch + sacct$([ "$GPUS" -gt 0 ] && echo ', fake GPU'))"
}

start() {
  local t0=$SECONDS
  install -d -m 0755 "$DIR"
  if ours_running && controller_up >/dev/null 2>&1 && node_idle_or_busy; then
    say "already running (started earlier by this script); nothing to do"
    return 0
  fi
  for name in slurmctld slurmd slurmdbd; do
    if pids_named "$name" | grep -q . && ! alive "$PIDS/$name.pid" "$name"; then
      die "a $name not started by this script is running (pid $(pids_named "$name" | tr '\n' ' ')); stop it first"
    fi
  done
  install_packages
  stop_daemons                          # half-started leftovers of an earlier start
  rm -rf "$DIR/ctld" "$DIR/spool"       # fresh controller state: no drained node, no old jobs
  write_config
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurm_daemons
  add_account
  smoke
  say "SLURM is up in $((SECONDS - t0)) s: partition $PARTITION, account $ACCOUNT, $GPUS fake GPU(s); logs in $DIR/log"
}

node_idle_or_busy() { sinfo -h -N -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)$'; }

cancel_jobs() {
  controller_up >/dev/null 2>&1 || return 0
  local jobs
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  [ -z "$jobs" ] && return 0
  say "cancelling leftover jobs: $(echo $jobs)"
  scancel $jobs 2>/dev/null || true
  wait_until 30 "cancelled jobs to end" bash -c '[ -z "$(squeue -h -t R,CG,PD -o %i)" ]' || true
}

stop_daemons() {
  stop_by_pidfile "$PIDS/slurmd.pid" slurmd
  stop_by_pidfile "$PIDS/slurmctld.pid" slurmctld
  stop_by_pidfile "$PIDS/slurmdbd.pid" slurmdbd
  stop_by_pidfile "$MYSQL_PID" mariadbd
  stop_by_pidfile "$MUNGE_PID" munged
}

stop() {
  local name left=""
  cancel_jobs
  stop_daemons
  for name in slurmstepd slurmd slurmctld slurmdbd; do
    [ -z "$(pids_named "$name")" ] || left="$left $name($(pids_named "$name" | tr '\n' ' '))"
  done
  [ -z "$left" ] || say "WARNING: still running, not started by this script or not stopped:$left"
  say "stopped"
}

status() {
  local ok=0 entry f name
  for entry in "$MUNGE_PID:munged" "$MYSQL_PID:mariadbd" "$PIDS/slurmdbd.pid:slurmdbd" \
    "$PIDS/slurmctld.pid:slurmctld" "$PIDS/slurmd.pid:slurmd"; do
    f=${entry%:*} name=${entry##*:}
    if alive "$f" "$name"; then echo "$name: running (pid $(cat "$f"))"
    elif [ -e "$f" ] && [ ! -r "$f" ]; then echo "$name: unknown (PID file not readable; run as root)"
    else echo "$name: not running"; ok=1; fi
  done
  if command -v scontrol >/dev/null 2>&1 && controller_up 2>/dev/null; then
    sinfo -N -o "%N %P %T %c %m %G"
    squeue
  else
    echo "controller: not answering"; ok=1
  fi
  return $ok
}

ACTION=${1:-}
case "$ACTION" in
  start | restart | stop | smoke) need_root "$@" ;;
  status) ;;
  *) echo "usage: $0 start|restart|stop|status|smoke" >&2; exit 2 ;;
esac
case "$ACTION" in
  start) start ;;
  restart) stop; start ;;
  stop) stop ;;
  smoke) smoke ;;
  status) status ;;
esac

#!/usr/bin/env bash
# A real, throw-away SLURM cluster on this one machine, for the project's tests.
#
#   scripts/slurm_local.sh install  apt-get install Debian's SLURM 22.05, munge and MariaDB (no-op if present)
#   scripts/slurm_local.sh start    start munged, MariaDB, slurmdbd, slurmctld and two slurmd (node1, node2)
#   scripts/slurm_local.sh stop     stop exactly the processes `start` started (by PID); idempotent
#   scripts/slurm_local.sh status   print sinfo; exit status 0 iff the cluster is up
#   scripts/slurm_local.sh env      print the `export SLURM_CONF=...` line that SLURM clients need
#
# Needs root and Debian 12 (no systemd required). Everything it writes (configs, munge key, database, spool,
# logs, PIDs) lives under $WAME_SLURM_DIR (default /tmp/wame-slurm); outside it, only a `127.0.0.1 node1 node2`
# line is added to /etc/hosts. Daemons and clients find the config through SLURM_CONF (slurmdbd reads
# slurmdbd.conf from the same directory), so /etc/slurm stays untouched. The ports are fixed (slurmctld 6817,
# slurmdbd 6819, slurmd 17001/17002): one such cluster per machine.
set -euo pipefail

dir=${WAME_SLURM_DIR:-/tmp/wame-slurm}
export SLURM_CONF=$dir/slurm.conf
pids=$dir/pids  # one line per started process: name, PID, start time (the start time guards against PID reuse)
up=$dir/up      # exists from the end of a successful `start` until the next `stop`
munge_socket=$dir/run/munge.socket
mysql_socket=$dir/run/mysqld.sock
cluster=wame
account=wame
nodes=(node1 node2)
packages=(munge slurm-client slurmctld slurmd slurm-wlm-basic-plugins slurmdbd slurm-wlm-mysql-plugin
  mariadb-server)

log() { echo "slurm_local: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------------------------------------------ install
cmd_install() {
  local missing=() p
  for p in "${packages[@]}"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "installing ${missing[*]} needs root"
  log "installing ${missing[*]}"
  # Without a policy-rc.d that denies service starts, the packages' maintainer scripts would start munge,
  # MariaDB and the SLURM daemons with their packaged configs. Put ours in place, then restore what was there.
  policy_backup=""
  if [ -e /usr/sbin/policy-rc.d ]; then
    policy_backup=$(mktemp)
    cp -p /usr/sbin/policy-rc.d "$policy_backup"
  fi
  trap restore_policy EXIT
  trap 'exit 130' INT TERM
  printf '#!/bin/sh\n# temporary, from slurm_local.sh install: deny service starts\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  export DEBIAN_FRONTEND=noninteractive
  # Wait for the dpkg lock rather than fail when another apt-get is running.
  local apt=(apt-get -q -o DPkg::Lock::Timeout=600)
  "${apt[@]}" update || die "apt-get update failed"
  "${apt[@]}" install -y --no-install-recommends "${missing[@]}" || die "apt-get install ${missing[*]} failed"
}

restore_policy() {
  if [ -n "$policy_backup" ]; then
    mv -f "$policy_backup" /usr/sbin/policy-rc.d
  else
    rm -f /usr/sbin/policy-rc.d
  fi
}

# ------------------------------------------------------------------------------------------------ processes
# proc_state PID: prints "STATE STARTTIME" (fields 3 and 22 of /proc/PID/stat); fails if there is no such PID.
proc_state() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # shellcheck disable=SC2086  # split the fields after "(comm)" (comm itself may contain spaces) on purpose
  set -- ${stat##*) }
  echo "$1 ${20}"
}

# alive PID STARTTIME: the process we started is still running. A zombie (Z) or dead (X) one counts as
# stopped: daemons reparented to a PID 1 that does not reap them linger as zombies.
alive() {
  local state start
  read -r state start < <(proc_state "$1" || echo "X 0")
  [ "$state" != Z ] && [ "$state" != X ] && [ "$start" = "$2" ]
}

# all_alive: every recorded process is still running (and at least one is recorded).
all_alive() {
  local name pid start
  [ -s "$pids" ] || return 1
  while read -r name pid start; do
    alive "$pid" "$start" || return 1
  done <"$pids"
}

# record NAME PIDFILE: waits for a daemon's PID file, then records the PID with the process's start time.
record() {
  local pid="" i
  for ((i = 0; i < 100; i++)); do
    pid=$(cat "$2" 2>/dev/null || true)
    [ -n "$pid" ] && break
    sleep 0.1
  done
  [ -n "$pid" ] || fail "$1 wrote no PID file $2" "$dir/log/$1"*
  echo "$1 $pid $(proc_state "$pid" | cut -d' ' -f2)" >>"$pids"
}

# fail MESSAGE LOGFILE...: reports a failed start with the logs' tails, stops what was started, exits 1.
fail() {
  local msg=$1 f
  shift
  log "error: $msg"
  for f in "$@"; do
    [ -s "$f" ] && { echo "---- last lines of $f ----" >&2; tail -n 30 "$f" >&2; }
  done
  cmd_stop >/dev/null 2>&1 || true
  exit 1
}

# wait_for SECONDS WHAT LOGFILE... -- COMMAND...: polls COMMAND until it succeeds; fails as soon as one of the
# recorded processes dies, or when SECONDS have passed.
wait_for() {
  local seconds=$1 what=$2 logs=()
  shift 2
  while [ "$1" != -- ]; do logs+=("$1"); shift; done
  shift
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    all_alive || fail "a daemon died while waiting for $what" "${logs[@]}"
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${seconds}s waiting for $what" "${logs[@]}"
    sleep 0.2
  done
}

# ------------------------------------------------------------------------------------------------ config
write_configs() {
  local mem_mb
  # Each emulated node claims half of the machine's memory: memory is not a consumable resource here
  # (CR_Core), but a job's --mem must still fit a node's RealMemory.
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 / 2)}' /proc/meminfo)
  cat >"$dir/slurm.conf" <<EOF
# Written by scripts/slurm_local.sh; rewritten on every start.
ClusterName=$cluster
# Independent of this machine's hostname.
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=6817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Our own munged, with its own key and socket (not the system's /run/munge). cred_expire: a requeued job
# waits that long (+1 s) before it may start again (default 120 s); job steps must launch within it.
AuthInfo=socket=$munge_socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmctldLogFile=$dir/log/slurmctld.log
# %n is the node name: Debian builds SLURM with multiple-slurmd support, one slurmd per emulated node.
SlurmdSpoolDir=$dir/spool/%n
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmdLogFile=$dir/log/slurmd-%n.log
# Nodes may claim more CPUs than the hardware has without being drained.
SlurmdParameters=config_overrides
# No cgroups needed: track processes through /proc, no task binding, no per-job usage sampling.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# submitit reads job states only through sacct, so accounting (slurmdbd) is required.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
# Not a password: with slurmdbd and munge, this names the munge socket that slurmctld and sacctmgr use for
# their connections to slurmdbd (they ignore AuthInfo's socket there).
AccountingStoragePass=$munge_socket
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
# A node that was DOWN becomes usable again as soon as its slurmd registers with a valid config.
ReturnToService=2
# Seconds between SIGTERM and SIGKILL when a job is cancelled or times out.
KillWait=5
# Finished jobs leave slurmctld's memory (squeue, scontrol) after this many seconds; sacct keeps them.
# \`sbatch --wait\` polls every 2 s while MinJobAge < 8 (after 2, 10, 42 s... with larger values, default 300).
MinJobAge=4
# Jobs may be requeued (scontrol requeue, preemption, node failure).
JobRequeue=1
# batch_sched_delay=0: start a submitted batch job at once instead of batching submissions for up to 3 s.
# sched_interval=1: run the main scheduler every second (default 60 s), so that jobs which become eligible
# without an event (a requeued job after its cred_expire wait, --begin) start within a second, not at the
# next backfill cycle (30 s).
SchedulerParameters=batch_sched_delay=0,sched_interval=1
NodeName=node1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17001 CPUs=2 RealMemory=$mem_mb State=UNKNOWN
NodeName=node2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17002 CPUs=2 RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=UNLIMITED State=UP
EOF
  # slurmdbd refuses a config that others can read (it holds the database credentials).
  (
    umask 077
    cat >"$dir/slurmdbd.conf" <<EOF
# Written by scripts/slurm_local.sh; rewritten on every start.
AuthType=auth/munge
AuthInfo=socket=$munge_socket
# "localhost" is accepted whatever this machine's hostname is.
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$dir/log/slurmdbd.log
PidFile=$dir/run/slurmdbd.pid
StorageType=accounting_storage/mysql
# MariaDB listens on a unix socket only (MYSQL_UNIX_PORT tells the client library where); root logs in
# through unix_socket authentication, so there is no password.
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  )
}

# /etc/hosts: node names must resolve (torch's rendezvous at MASTER_ADDR=node1 retries forever otherwise).
ensure_hosts() {
  nodes_resolve && return 0
  echo "127.0.0.1 ${nodes[*]}" >>/etc/hosts
  nodes_resolve || die "${nodes[*]} do not all resolve to 127.0.0.1: see /etc/hosts"
}

nodes_resolve() {
  local n
  for n in "${nodes[@]}"; do
    [ "$(getent ahostsv4 "$n" | awk 'NR == 1 {print $1}')" = 127.0.0.1 ] || return 1
  done
}

# ------------------------------------------------------------------------------------------------ start
cmd_start() {
  [ "$(id -u)" -eq 0 ] || die "start needs root"
  if is_up; then
    log "already running ($dir)"
    return 0
  fi
  if [ -e "$pids" ]; then
    log "stopping the remains of an earlier cluster"
    cmd_stop
  fi
  local b
  for b in munged mariadbd mariadb-install-db mariadb-admin slurmdbd slurmctld slurmd sacctmgr sinfo sdiag; do
    command -v "$b" >/dev/null || die "$b not found: run '$0 install' first"
  done
  mkdir -p "$dir"/{run,log,state,munge,mysql} "${nodes[@]/#/$dir/spool/}"
  chmod 755 "$dir"
  rm -f "$dir"/run/*.pid
  write_configs
  ensure_hosts
  : >"$pids"

  # munged: its own key, socket and logs. It checks that the key is private and that the directories on the
  # socket's path are not writable by others (sticky /tmp is fine).
  if [ ! -s "$dir/munge/munge.key" ]; then
    (umask 077 && dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none)
  fi
  chmod 700 "$dir/munge"
  munged --socket="$munge_socket" --key-file="$dir/munge/munge.key" --seed-file="$dir/munge/munge.seed" \
    --log-file="$dir/log/munged.log" --pid-file="$dir/run/munged.pid" --force \
    </dev/null >>"$dir/log/munged.out" 2>&1 || fail "munged did not start" "$dir"/log/munged.*
  record munged "$dir/run/munged.pid"

  # MariaDB, unix socket only, data under the state directory (initialised on the first start only).
  # mariadbd does not daemonise itself: setsid detaches it; its output must not hold our stdout open.
  local my=(--no-defaults --user=root --datadir="$dir/mysql")
  if [ ! -d "$dir/mysql/mysql" ]; then
    mariadb-install-db "${my[@]}" --auth-root-authentication-method=socket --skip-test-db \
      </dev/null >>"$dir/log/mariadb.out" 2>&1 || fail "mariadb-install-db failed" "$dir/log/mariadb.out"
  fi
  setsid mariadbd "${my[@]}" --skip-networking --socket="$mysql_socket" --pid-file="$dir/run/mariadb.pid" \
    --log-error="$dir/log/mariadb.log" </dev/null >>"$dir/log/mariadb.out" 2>&1 &
  record mariadb "$dir/run/mariadb.pid"
  wait_for 30 MariaDB "$dir"/log/mariadb.* -- mariadb-admin --no-defaults --socket="$mysql_socket" ping

  # slurmdbd, then register the cluster, an account, and root as its user (sacctmgr talks to slurmdbd).
  MYSQL_UNIX_PORT=$mysql_socket slurmdbd </dev/null >>"$dir/log/slurmdbd.out" 2>&1 ||
    fail "slurmdbd did not start" "$dir"/log/slurmdbd.*
  record slurmdbd "$dir/run/slurmdbd.pid"
  wait_for 30 slurmdbd "$dir"/log/slurmdbd.* -- sacctmgr -n show cluster
  if [ -z "$(sacctmgr -n -P show cluster "$cluster" format=cluster)" ]; then
    sacctmgr -i -Q add cluster "$cluster" >/dev/null || fail "sacctmgr add cluster failed" "$dir/log/slurmdbd.log"
  fi
  if [ -z "$(sacctmgr -n -P show account "$account" format=account)" ]; then
    sacctmgr -i -Q add account "$account" cluster="$cluster" description="wame_dist tests" organization=wame \
      >/dev/null || fail "sacctmgr add account failed" "$dir/log/slurmdbd.log"
  fi
  if [ -z "$(sacctmgr -n -P show user root format=user)" ]; then
    sacctmgr -i -Q add user root account="$account" defaultaccount="$account" >/dev/null ||
      fail "sacctmgr add user failed" "$dir/log/slurmdbd.log"
  fi

  slurmctld </dev/null >>"$dir/log/slurmctld.out" 2>&1 || fail "slurmctld did not start" "$dir"/log/slurmctld.*
  record slurmctld "$dir/run/slurmctld.pid"
  local n
  for n in "${nodes[@]}"; do
    slurmd -N "$n" </dev/null >>"$dir/log/slurmd-$n.out" 2>&1 || fail "slurmd $n did not start" "$dir"/log/slurmd-"$n".*
    record "slurmd-$n" "$dir/run/slurmd-$n.pid"
  done

  # Ready when both nodes are idle and slurmctld has run its first scheduling cycle (3-4 s after its start;
  # jobs submitted before then wait for it).
  wait_for 30 "idle nodes" "$dir"/log/slurmctld.log "$dir"/log/slurmd-*.log -- nodes_idle
  wait_for 30 "the first scheduling cycle" "$dir"/log/slurmctld.log -- scheduled_once
  touch "$up"
  log "cluster up ($dir); clients need: $(cmd_env)"
}

nodes_idle() {
  [ "$(sinfo -h -N -p debug -o '%N %T' | sort -u | tr '\n' ' ')" = "node1 idle node2 idle " ]
}

scheduled_once() {
  [ "$(sdiag | awk '/Total cycles:/ {print $3; exit}')" -gt 0 ]
}

# ------------------------------------------------------------------------------------------------ stop
cmd_stop() {
  if [ ! -s "$pids" ]; then
    rm -f "$pids" "$up"
    log "not running"
    return 0
  fi
  rm -f "$up"
  # Cancel leftover jobs first, so that their processes do not outlive the cluster.
  local jobs
  if jobs=$(timeout 10 squeue -h -o %A 2>/dev/null) && [ -n "$jobs" ]; then
    log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
    # shellcheck disable=SC2086  # one argument per job ID
    scancel $jobs || true
    local deadline=$((SECONDS + 15))
    while [ -n "$(timeout 10 squeue -h -o %A 2>/dev/null)" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  fi
  # Stop in the reverse order of starting (slurmds, slurmctld, slurmdbd, MariaDB, munged), each by PID.
  local name pid start i
  while read -r name pid start; do
    alive "$pid" "$start" || continue
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      alive "$pid" "$start" || break
      sleep 0.1
    done
    if alive "$pid" "$start"; then
      log "$name ($pid) ignored SIGTERM for 15 s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done < <(tac "$pids")
  rm -f "$pids"
  log "stopped ($dir)"
}

# ------------------------------------------------------------------------------------------------ status, env
is_up() {
  [ -e "$up" ] && all_alive && timeout 10 sinfo -h >/dev/null 2>&1
}

cmd_status() {
  if is_up; then
    sinfo
    echo "running ($dir)"
  else
    echo "not running ($dir)"
    return 1
  fi
}

cmd_env() {
  printf 'export SLURM_CONF=%q\n' "$SLURM_CONF"
}

case ${1:-} in
  install | start | stop | status | env) "cmd_$1" ;;
  *)
    echo "usage: $0 install|start|stop|status|env" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# start-local-slurm.sh - idempotent single-machine Slurm "cluster" for CI (Debian 12, root, no systemd).
#
# The project's copy of ../shared/tools/start-local-slurm.sh, used by tests/test_slurm.py. Changed
# from the original: the ports are configurable (SLURM_LOCAL_PORT), so the tests' instance can run
# beside one started with the shared script's defaults.
#
#   start-local-slurm.sh [start]   install (if needed) + configure + start munged/slurmctld/slurmd,
#                                  wait until `sinfo` shows the node idle. Safe to call repeatedly.
#   start-local-slurm.sh stop      stop the daemons this script started (by their recorded PIDs)
#   start-local-slurm.sh status    print daemon PIDs and sinfo
#
# Afterwards:  export SLURM_CONF=$SLURM_LOCAL_ROOT/etc/slurm.conf   (printed on success)
#
# Env knobs:
#   SLURM_LOCAL_ROOT   where config/state/logs/pids live   (default $TMPDIR/local-slurm)
#   SLURM_LOCAL_WAIT   seconds to wait for the node to become idle (default 60)
#   SLURM_LOCAL_RESET  1 = wipe state (job queue, job ids) before starting (default 0)
#   SLURM_LOCAL_NODES  number of emulated nodes (default 1 -> one node "localhost"; N>1 -> nodes
#                      node[1-N], one slurmd each on ports PORT+1.., all on 127.0.0.1, every node
#                      claiming the full machine; for multi-node srun/SLURM_NODEID tests)
#   SLURM_LOCAL_PORT   slurmctld's port (default 6817); node k's slurmd listens on PORT+1+k
set -euo pipefail

ROOT=${SLURM_LOCAL_ROOT:-${TMPDIR:-/tmp}/local-slurm}
WAIT=${SLURM_LOCAL_WAIT:-60}
NNODES=${SLURM_LOCAL_NODES:-1}
PORT=${SLURM_LOCAL_PORT:-6817}
[[ $PORT =~ ^[1-9][0-9]*$ ]] || { echo "SLURM_LOCAL_PORT must be a port number" >&2; exit 2; }
[[ $NNODES =~ ^[1-9][0-9]*$ ]] || { echo "SLURM_LOCAL_NODES must be a positive integer" >&2; exit 2; }
if (( NNODES == 1 )); then NODES=(localhost); else NODES=(); for ((k = 1; k <= NNODES; k++)); do NODES+=("node$k"); done; fi
CONF=$ROOT/etc/slurm.conf
MUNGE_DIR=$ROOT/munge
MUNGE_SOCK=$MUNGE_DIR/run/munge.socket.2
RUN=$ROOT/run
export SLURM_CONF=$CONF

log() { printf '[local-slurm %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- pid helpers: a recorded PID counts only if it is alive AND is the expected program ---
alive() {  # alive NAME EXE
  local f=$RUN/$1.pid p
  [[ -s $f ]] || return 1
  p=$(<"$f")
  [[ -d /proc/$p ]] || return 1
  [[ $(readlink -f "/proc/$p/exe" 2>/dev/null) == "$(readlink -f "$2")" ]]
}

stop_one() {  # stop_one NAME EXE
  local f=$RUN/$1.pid p
  if alive "$1" "$2"; then
    p=$(<"$f")
    log "stopping $1 (pid $p)"
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do [[ -d /proc/$p ]] || break; sleep 0.2; done
    if [[ -d /proc/$p ]]; then log "$1 (pid $p) ignored SIGTERM, sending SIGKILL"; kill -KILL "$p" 2>/dev/null || true; fi
  fi
  rm -f "$f"
}

stop_slurmds() {
  local f
  for f in "$RUN"/slurmd-*.pid; do [[ -e $f ]] || continue; f=${f##*/}; stop_one "${f%.pid}" /usr/sbin/slurmd; done
}

do_stop() {
  stop_slurmds
  stop_one slurmctld /usr/sbin/slurmctld
  stop_one munged /usr/sbin/munged
}

do_status() {
  local n nd
  local daemons=(munged:/usr/sbin/munged slurmctld:/usr/sbin/slurmctld)
  for nd in "${NODES[@]}"; do daemons+=("slurmd-$nd:/usr/sbin/slurmd"); done
  for n in "${daemons[@]}"; do
    if alive "${n%%:*}" "${n#*:}"; then echo "${n%%:*}: running (pid $(<"$RUN/${n%%:*}.pid"))"; else echo "${n%%:*}: not running"; fi
  done
  sinfo 2>&1 || true
}

install_pkgs() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
     && command -v munged >/dev/null && command -v mungekey >/dev/null; then
    return 0
  fi
  log "installing slurmctld slurmd slurm-client munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d on these images already stops postinst from starting services; no systemd anyway
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
  local nd k
  mkdir -p "$ROOT"/{etc,log,jobs} "$RUN" "$ROOT/state/ctld" "$MUNGE_DIR"/{etc,run,lib,log}
  for nd in "${NODES[@]}"; do mkdir -p "$ROOT/state/d/$nd"; done
  chmod 700 "$MUNGE_DIR/etc"
  # munge key (own copy, owned by root since munged runs as root here)
  if [[ ! -s $MUNGE_DIR/etc/munge.key ]]; then
    mungekey --create --keyfile="$MUNGE_DIR/etc/munge.key"
  fi
  chown root:root "$MUNGE_DIR/etc/munge.key"; chmod 400 "$MUNGE_DIR/etc/munge.key"

  # Node hardware line straight from slurmd -C, renamed to a fixed NodeName; avoids
  # "Node configuration differs from hardware" / low RealMemory drains on differently sized runners.
  local hw nodelines=""
  hw=$(slurmd -C | head -n1 | sed -E "s/^NodeName=[^ ]+ //")
  [[ $hw == CPUs=* ]] || die "unexpected 'slurmd -C' output: $hw"
  k=0
  for nd in "${NODES[@]}"; do
    nodelines+="NodeName=$nd NodeAddr=127.0.0.1 Port=$((PORT + 1 + k)) $hw State=UNKNOWN"$'\n'
    k=$((k + 1))
  done

  local tmp=$CONF.tmp.$$
  cat >"$tmp" <<EOF
# generated by start-local-slurm.sh - local Slurm for CI (no cgroups, no accounting daemon)
ClusterName=ci
# slurmctld accepts "localhost" as its own name whatever the machine's hostname is
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
StateSaveLocation=$ROOT/state/ctld
SlurmdSpoolDir=$ROOT/state/d/%n
SlurmctldPidFile=$RUN/slurmctld.pidfile
SlurmdPidFile=$RUN/slurmd-%n.pidfile
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$ROOT/log/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
${nodelines}PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  if [[ -f $CONF ]] && cmp -s "$tmp" "$CONF"; then rm -f "$tmp"; return 1; fi  # 1 = unchanged
  mv "$tmp" "$CONF"; return 0                                                   # 0 = changed
}

start_bg() {  # start_bg NAME cmd...   (setsid+nohup, foreground-mode daemon, PID recorded)
  local name=$1; shift
  setsid nohup "$@" >>"$ROOT/log/$name.out" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
  log "started $name (pid $!)"
}

do_start() {
  local t0=$SECONDS changed=0 st="" nd
  [[ $(id -u) == 0 ]] || die "must run as root"
  install_pkgs
  if write_config; then changed=1; fi

  if [[ ${SLURM_LOCAL_RESET:-0} == 1 ]]; then
    do_stop; rm -rf "$ROOT/state/ctld" "$ROOT/state/d"; write_config || true; changed=1
  fi
  # config changed while running -> restart slurm daemons (munge can stay)
  if (( changed )); then
    stop_slurmds; stop_one slurmctld /usr/sbin/slurmctld   # no-op when nothing runs
  fi

  if ! alive munged /usr/sbin/munged; then
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    start_bg munged /usr/sbin/munged -F --key-file="$MUNGE_DIR/etc/munge.key" --socket="$MUNGE_SOCK" \
      --pid-file="$MUNGE_DIR/run/munged.pid" --seed-file="$MUNGE_DIR/lib/munged.seed" \
      --log-file="$MUNGE_DIR/log/munged.log"
    for _ in $(seq 1 50); do [[ -S $MUNGE_SOCK ]] && break; sleep 0.1; done
  fi
  munge -n --socket="$MUNGE_SOCK" | unmunge --socket="$MUNGE_SOCK" >/dev/null || die "munge self-test failed (see $MUNGE_DIR/log/munged.log)"

  # -D: stay in foreground (we background it ourselves);  -i: ignore state files that fail to load
  alive slurmctld /usr/sbin/slurmctld || start_bg slurmctld /usr/sbin/slurmctld -D -i -f "$CONF"
  for nd in "${NODES[@]}"; do
    alive "slurmd-$nd" /usr/sbin/slurmd || start_bg "slurmd-$nd" /usr/sbin/slurmd -D -N "$nd" -f "$CONF"
  done

  local up=0
  for _ in $(seq 1 $((WAIT * 4))); do
    up=0
    for nd in "${NODES[@]}"; do
      st=$(sinfo -h -n "$nd" -o '%T' 2>/dev/null || true)
      case $st in
        idle|mixed|allocated|completing) up=$((up + 1)) ;;
        drained|draining|down|'down*'|'drained*'|fail)
          # e.g. left DOWN/DRAIN from a previous run: bring it back
          scontrol update NodeName="$nd" State=RESUME >/dev/null 2>&1 || true ;;
      esac
      alive "slurmd-$nd" /usr/sbin/slurmd || die "slurmd on $nd died; tail of log:$(printf '\n'; tail -n 20 "$ROOT/log/slurmd-$nd.out")"
    done
    (( up == NNODES )) && break
    alive slurmctld /usr/sbin/slurmctld || die "slurmctld died; tail of log:$(printf '\n'; tail -n 20 "$ROOT/log/slurmctld.out")"
    sleep 0.25
  done
  (( up == NNODES )) || { sinfo -N -l >&2 || true; sinfo -R >&2 || true; die "only $up/$NNODES node(s) up after ${WAIT}s"; }
  log "slurm ready in $((SECONDS - t0))s: $NNODES node(s) up: ${NODES[*]}"
  echo "export SLURM_CONF=$CONF"
}

case ${1:-start} in
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop; do_start ;;
  status) do_status ;;
  *) echo "usage: $0 [start|stop|restart|status]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and for trying the cluster path.
#
# Run it as root (prefix each command with sudo when you are not):
#   scripts/slurm_cluster.sh install   # apt-get install slurmctld slurmd slurm-client munge
#   scripts/slurm_cluster.sh start     # idempotent; prints the line to export SLURM_CONF
#   scripts/slurm_cluster.sh status
#   scripts/slurm_cluster.sh stop      # cancels every job, stops the daemons (munged too, if started
#                                      # here); keeps the logs in $WAB_SLURM_DIR/log
#
# Config, state and logs live in $WAB_SLURM_DIR (default /tmp/wab-slurm): SlurmUser=root,
# proctrack/pgid, task/none, no accounting (so sacct is unavailable, as on many clusters).
# MaxArraySize is $WAB_SLURM_MAX_ARRAY_SIZE (default 1001; CI sets a small one so that sweeps are
# split into several arrays). Clients (sbatch, squeue, scontrol and submitit) need
# SLURM_CONF=$WAB_SLURM_DIR/slurm.conf.
set -euo pipefail
dir="${WAB_SLURM_DIR:-/tmp/wab-slurm}"
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"
host="$(hostname -s)"

running() { [ -f "$dir/run/$1.pid" ] && kill -0 "$(cat "$dir/run/$1.pid")" 2>/dev/null; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
     && command -v munged >/dev/null; then
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  [ -f /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
  chmod 0400 /etc/munge/munge.key
  chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  mkdir -p "$dir/run" && touch "$dir/run/munged.ours"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "munged did not start" >&2; return 1
}

write_conf() {
  mkdir -p "$dir"/{state,spool,log,run}
  local cpus mem
  cpus="$(nproc)"
  mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
  cat > "$conf" <<CONF
ClusterName=wab
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MaxArraySize=${WAB_SLURM_MAX_ARRAY_SIZE:-1001}
MpiDefault=none
MinJobAge=60
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
}

start() {
  install
  start_munge
  running slurmctld || write_conf
  running slurmctld || slurmctld -f "$conf"
  running slurmd || slurmd -f "$conf"
  for _ in $(seq 100); do
    if sinfo -h -N -o "%T" 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
      echo "export SLURM_CONF=$conf"
      return 0
    fi
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 0.3
  done
  echo "SLURM did not come up; see $dir/log/" >&2
  return 1
}

stop() {
  if running slurmctld; then
    squeue -h -o %i | xargs -r scancel >/dev/null 2>&1 || true
    for _ in $(seq 100); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.1; done
  fi
  for d in slurmd slurmctld; do
    if running "$d"; then
      pid="$(cat "$dir/run/$d.pid")"
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  if [ -f "$dir/run/munged.ours" ] && [ -f /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
  fi
  rm -rf "$dir"/{state,spool,run}   # the logs stay in $dir/log
}

status() { sinfo -N -l; squeue; }

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; }

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  ""|-h|--help) usage; exit 2 ;;  # nothing is installed or started without a word for it
  *) echo "unknown command ${1}: use install, start, status or stop" >&2; usage; exit 2 ;;
esac

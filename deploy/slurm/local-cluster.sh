#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (Debian's slurmctld, slurmd and munge), for trying
# deploy/slurm/generate.sbatch and for its test. Runs as root; keeps its state in STATE_DIR.
#
#   deploy/slurm/local-cluster.sh start /tmp/slurm     # then: SLURM_CONF=/tmp/slurm/slurm.conf sbatch ...
#   deploy/slurm/local-cluster.sh stop /tmp/slurm
#
# Packages: apt-get install slurmctld slurmd slurm-client munge. Ports: SLURMCTLD_PORT (6817), SLURMD_PORT (6818).
set -euo pipefail
cmd="${1:?usage: local-cluster.sh start|stop STATE_DIR}"
dir="$(realpath -m "${2:?usage: local-cluster.sh start|stop STATE_DIR}")"
conf="$dir/slurm.conf"

case "$cmd" in
start)
  for tool in slurmctld slurmd munged sinfo; do
    command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install slurmctld slurmd slurm-client munge" >&2; exit 1; }
  done
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  host="$(hostname -s)"
  cpus="$(nproc)"
  memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
  cat > "$conf" <<CONF
ClusterName=p2plocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
  # munge: the package's key; munged refuses to run as root without --force.
  mkdir -p /run/munge
  [ -f /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  pgrep -x munged >/dev/null || munged --force
  slurmctld -f "$conf"
  slurmd -f "$conf"
  for _ in $(seq 1 60); do
    if SLURM_CONF="$conf" sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      echo "Slurm is up: export SLURM_CONF=$conf"
      exit 0
    fi
    sleep 1
  done
  echo "Slurm did not come up; see $dir/log" >&2
  exit 1
  ;;
stop)
  for pid in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  ;;
*)
  echo "usage: local-cluster.sh start|stop STATE_DIR" >&2
  exit 2
  ;;
esac

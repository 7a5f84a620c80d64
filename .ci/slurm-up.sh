#!/usr/bin/env bash
# A real single-node SLURM on this host (munged + slurmctld + slurmd), for the SLURM tests.
# Debian packages, no cgroups (proctrack/linuxproc, task/none); idempotent: safe to run twice.
set -euo pipefail

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))  # half the RAM: modest on purpose
CONF_DIR=/etc/slurm
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOGS" /etc/munge /var/run/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key

cat > "$CONF_DIR/slurm.conf" <<EOF
ClusterName=heurbench
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=/var/run/slurmctld.pid
SlurmdPidFile=/var/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MessageTimeout=30
KillWait=5
MaxArraySize=10001
DefMemPerCPU=1024
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! alive /var/run/munge/munged.pid; then
  su -s /bin/sh munge -c "/usr/sbin/munged" 2>/dev/null || /usr/sbin/munged --force
fi
if alive /var/run/slurmctld.pid; then
  scontrol reconfigure >/dev/null 2>&1 || true
else
  slurmctld
fi
alive /var/run/slurmd.pid || slurmd

for _ in $(seq 1 60); do
  state=$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -1 || true)
  case "$state" in
    idle|mix|alloc) echo "slurm up: node $HOST $state, $CPUS CPUs, ${MEM_MB} MB, partition debug"; exit 0 ;;
    down*|drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
echo "slurm did not come up; see $LOGS/slurmctld.log and $LOGS/slurmd.log" >&2
sinfo -N -l >&2 || true
exit 1

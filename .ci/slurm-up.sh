#!/usr/bin/env bash
# A real SLURM on this host (munged + slurmctld + three slurmd), for the SLURM tests:
#   partition debug (default): node $HOST, all CPUs;
#   partition multi: nodes $HOST-a and $HOST-b, one CPU each: two SLURM nodes on this one host (Debian's build has
#   MULTIPLE_SLURMD), each its own `slurmd -N NAME` on its own port, for 2-node jobs (tests/test_slurm.py ray mode).
# Debian packages, no cgroups (proctrack/linuxproc, task/none). Idempotent: safe to run twice; when slurm.conf
# changes (e.g. over the old one-node layout) slurmctld and every slurmd are restarted.
set -euo pipefail

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))  # half the RAM: modest on purpose
NODES=("$HOST" "$HOST-a" "$HOST-b")  # debug's node, then multi's two
CONF_DIR=/etc/slurm
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd  # one folder per node: $SPOOL/<node>
LOGS=/var/log/slurm

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

mkdir -p "$CONF_DIR" "$STATE" "$LOGS" /etc/munge /var/run/munge /var/log/munge /var/lib/munge
for n in "${NODES[@]}"; do mkdir -p "$SPOOL/$n"; done
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key

new=$(mktemp)
trap 'rm -f "$new"' EXIT
cat > "$new" <<EOF
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
SlurmdSpoolDir=$SPOOL/%n
SlurmctldPidFile=/var/run/slurmctld.pid
SlurmdPidFile=/var/run/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MessageTimeout=30
KillWait=5
MaxArraySize=10001
DefMemPerCPU=1024
# Three slurmd on this host (MULTIPLE_SLURMD): one port each, started as \`slurmd -N <NodeName>\`.
NodeName=${NODES[0]} NodeHostname=$HOST Port=6818 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
NodeName=${NODES[1]} NodeHostname=$HOST Port=6819 CPUs=1 RealMemory=$(( MEM_MB / 2 )) State=UNKNOWN
NodeName=${NODES[2]} NodeHostname=$HOST Port=6820 CPUs=1 RealMemory=$(( MEM_MB / 2 )) State=UNKNOWN
PartitionName=debug Nodes=${NODES[0]} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=multi Nodes=${NODES[1]},${NODES[2]} MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

alive() { [ -s "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]; }  # pid file, daemon name
stop() {  # pid file, daemon name: SIGTERM the daemon of that pid file, wait for it to end
  if alive "$1" "$2"; then
    local pid; pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$1"
}

if ! cmp -s "$new" "$CONF_DIR/slurm.conf"; then  # new nodes need slurmctld and the slurmd restarted
  stop /var/run/slurmctld.pid slurmctld
  stop /var/run/slurmd.pid slurmd  # the old one-node layout's slurmd
  for n in "${NODES[@]}"; do stop "/var/run/slurmd-$n.pid" slurmd; done
  cp "$new" "$CONF_DIR/slurm.conf"
fi

if ! alive /var/run/munge/munged.pid munged; then
  su -s /bin/sh munge -c "/usr/sbin/munged" 2>/dev/null || /usr/sbin/munged --force
fi
alive /var/run/slurmctld.pid slurmctld || slurmctld
for n in "${NODES[@]}"; do
  alive "/var/run/slurmd-$n.pid" slurmd || slurmd -N "$n"
done

for _ in $(seq 1 60); do
  ready=0
  for n in "${NODES[@]}"; do
    state=$(sinfo -h -N -n "$n" -o %t 2>/dev/null | head -1 || true)
    case "$state" in
      idle|mix|alloc) ready=$((ready + 1)) ;;
      down*|drain*) scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true ;;
    esac
  done
  if [ "$ready" -eq "${#NODES[@]}" ]; then
    echo "slurm up: partition debug: node ${NODES[0]}, $CPUS CPUs, ${MEM_MB} MB;" \
         "partition multi: nodes ${NODES[1]},${NODES[2]}, 1 CPU each"
    exit 0
  fi
  sleep 1
done
echo "slurm did not come up; see $LOGS/slurmctld.log and $LOGS/slurmd-<node>.log" >&2
sinfo -N -l >&2 || true
exit 1

#!/usr/bin/env bash
# A one-host Slurm cluster on localhost, without systemd (DESIGN.md §3): Debian's slurm-wlm + munge, a slurm.conf
# with linuxproc/none/cons_tres, no accounting, JobRequeue=1 and fast requeue settings, then munged, slurmctld and
# slurmd. Run as root. Idempotent: packages install once, the config is rewritten only when it differs, and daemons
# already running are left alone. Returns once `sinfo` shows the node idle (or fails after a bounded wait).
set -euo pipefail

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
WAIT_S=${SLURM_IDLE_WAIT_S:-60}

if [ "$(id -u)" -ne 0 ]; then
  echo "install_slurm.sh: run as root" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends slurm-wlm munge
fi

# munge: a key (the package normally creates one), its runtime dir, the daemon as user munge.
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- munged
  for _ in $(seq 1 50); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
  done
  munge -n </dev/null | unmunge >/dev/null
fi

# slurm.conf: the node line as slurmd itself sees the hardware, reachable on 127.0.0.1.
node_line=$(slurmd -C | head -n 1)
node_name=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node_line")
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
new_conf=$(
  cat <<CONF
# Written by ard_scale scripts/install_slurm.sh: a one-host CPU cluster for tests.
ClusterName=ard
SlurmctldHost=$node_name(127.0.0.1)
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobRequeue=1
ReturnToService=2
MpiDefault=none
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$node_name Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
)
changed=0
if [ "$(cat "$CONF" 2>/dev/null)" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" >"$CONF"
  changed=1
fi

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if running /run/slurm/slurmctld.pid; then
  [ "$changed" -eq 1 ] && scontrol reconfigure
else
  slurmctld -c
fi
if ! running /run/slurm/slurmd.pid; then
  slurmd
fi

# Bounded wait for the node to come up idle.
deadline=$((SECONDS + WAIT_S))
while :; do
  state=$(sinfo -h -n "$node_name" -o '%T' 2>/dev/null | head -n 1 || true)
  case "$state" in
    idle | mixed | allocated) break ;;
    down* | drain*) scontrol update NodeName="$node_name" State=RESUME 2>/dev/null || true ;;
  esac
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "install_slurm.sh: node $node_name not idle after ${WAIT_S}s (state: ${state:-none})" >&2
    sinfo >&2 || true
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    exit 1
  fi
  sleep 0.2
done
sinfo

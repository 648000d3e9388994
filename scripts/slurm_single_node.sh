#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the end-to-end test of `layerprune submit`
# (tests/slurm.rs): installs Debian's slurm-wlm and munge if missing, writes a minimal
# slurm.conf (no cgroups: proctrack/linuxproc, task/none; state under $SLURM_TEST_DIR),
# starts munged, slurmctld and slurmd, and waits until the node is idle. Needs root.
# Prints the exact error and exits 1 when a step fails.
set -euo pipefail
DIR=${SLURM_TEST_DIR:-/tmp/layerprune-slurm}
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
mkdir -p "$DIR/state" "$DIR/spool" /etc/slurm /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
if ! munge -n </dev/null >/dev/null 2>&1; then
  su -s /bin/sh munge -c /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
fi
munge -n </dev/null | unmunge >/dev/null
HOST=$(hostname -s)
CPUS=$(nproc)
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=layerprune-test
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerParameters=defer_batch
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    sinfo
    exit 0
  fi
  sleep 1
done
echo "slurm did not come up; sinfo says: $(sinfo 2>&1)" >&2
tail -20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
exit 1

#!/bin/sh
# SLURM lab container entrypoint. JOBKIT_SLURM_ROLE: controller (munge, MariaDB + slurmdbd when
# JOBKIT_SLURM_ACCT=1, slurmctld, then sshd in the foreground: the login node), compute (munge,
# slurmd) or single (all of it in one container, its own compute node). The munge key
# (JOBKIT_MUNGE_KEY, base64) is the same on every node of a cluster; slurm.conf is written from
# the environment: JOBKIT_SLURM_CONTROLLER, JOBKIT_SLURM_NODES (node names, space separated),
# JOBKIT_SLURM_CPUS, JOBKIT_SLURM_MIN_JOB_AGE.
set -eu
role=${JOBKIT_SLURM_ROLE:-single}
acct=${JOBKIT_SLURM_ACCT:-1}
me=$(hostname)
ctl=${JOBKIT_SLURM_CONTROLLER:-$me}
nodes=${JOBKIT_SLURM_NODES:-$me}
cpus=${JOBKIT_SLURM_CPUS:-2}
min_job_age=${JOBKIT_SLURM_MIN_JOB_AGE:-10}
: "${JOBKIT_MUNGE_KEY:?the lab passes the munge key of the cluster}"

umask 022
printf '%s' "$JOBKIT_MUNGE_KEY" | base64 -d >/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
unset JOBKIT_MUNGE_KEY
nodelist=$(printf '%s' "$nodes" | tr ' ' ',')
{
  echo "ClusterName=jobkitlab"
  echo "SlurmctldHost=$ctl"
  echo "SlurmUser=root"
  echo "AuthType=auth/munge"
  echo "ProctrackType=proctrack/linuxproc"
  echo "TaskPlugin=task/none"
  echo "JobAcctGatherType=jobacct_gather/none"
  echo "SelectType=select/cons_tres"
  echo "SelectTypeParameters=CR_Core"
  echo "ReturnToService=2"
  echo "SlurmdParameters=config_overrides"
  echo "MinJobAge=$min_job_age"
  echo "KillWait=5"
  echo "SlurmctldTimeout=10"
  echo "SlurmdTimeout=30"
  echo "StateSaveLocation=/var/spool/slurmctld"
  echo "SlurmdSpoolDir=/var/spool/slurmd"
  echo "SlurmctldLogFile=/var/log/slurm/slurmctld.log"
  echo "SlurmdLogFile=/var/log/slurm/slurmd.log"
  echo "JobCompType=jobcomp/filetxt"
  echo "JobCompLoc=/var/log/slurm/jobcomp.txt"
  if [ "$acct" = 1 ]; then
    echo "AccountingStorageType=accounting_storage/slurmdbd"
    echo "AccountingStorageHost=$ctl"
  fi
  for n in $nodes; do echo "NodeName=$n CPUs=$cpus RealMemory=500 State=UNKNOWN"; done
  echo "PartitionName=debug Nodes=$nodelist Default=YES MaxTime=INFINITE State=UP"
} >/etc/slurm/slurm.conf
echo "CgroupPlugin=cgroup/v1" >/etc/slurm/cgroup.conf

chown munge:munge /run/munge
runuser -u munge -- munged

start_accounting() {
  mkdir -p /run/mysqld && chown mysql /run/mysqld
  (mysqld_safe >/dev/null 2>&1 &)
  i=0; until mariadb-admin ping >/dev/null 2>&1; do i=$((i + 1)); [ "$i" -lt 300 ] || exit 1; sleep 0.1; done
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=$me
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  slurmdbd
  i=0; until sacctmgr -n list cluster >/dev/null 2>&1; do i=$((i + 1)); [ "$i" -lt 300 ] || exit 1; sleep 0.1; done
}

case $role in
  controller|single)
    if [ "$acct" = 1 ]; then start_accounting; fi
    slurmctld
    # the job completion log must be open to users for `sacct -c` (Slurm 22.05's reader opens it
    # read-write: 0644 is "Permission denied"); slurmctld sets its mode when it starts: after it
    i=0; until scontrol ping 2>/dev/null | grep -q UP; do i=$((i + 1)); [ "$i" -lt 300 ] || break; sleep 0.1; done
    touch /var/log/slurm/jobcomp.txt && chmod 666 /var/log/slurm/jobcomp.txt
    if [ "$role" = single ]; then slurmd; fi
    exec /bin/sh /usr/local/sbin/jobkit-entrypoint ;;
  compute)
    slurmd
    exec sleep infinity ;;
  *) echo "unknown JOBKIT_SLURM_ROLE $role" >&2; exit 64 ;;
esac

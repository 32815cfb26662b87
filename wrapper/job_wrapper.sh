#!/bin/sh
# jobkit job wrapper: run one job and record how it really ended, twice:
#   <base>/server.db            row `id` of table `jobs` (inserted by the client beforehand)
#   <base>/jobs/<JOB_ID>.status JSON state file, always replaced atomically
#   <base>/jobs/<JOB_ID>.out, .err  the job's stdout and stderr, when JOBKIT_OUTPUT=files
# Usage: job_wrapper.sh JOB_ID COMMAND [ARGS...]    Protocol: wrapper/README.md
#
# POSIX sh only (dash, bash, BusyBox ash, mksh, yash, zsh as sh, posh). It must never run the
# job in the foreground, use an unvalidated id anywhere, write a state file in place, let the
# job inherit a lock, or lose the state-file write because of the database.
# No `set -e`/`set -u`: every step is checked where it matters and cleanup must always finish.

JOBKIT_WRAPPER_VERSION=1
IFS=' 	
'

if [ "$#" -lt 2 ]; then
  printf 'usage: job_wrapper.sh JOB_ID COMMAND [ARGS...]\n' >&2
  exit 64
fi
job_id=$1
shift
# Explicit character list: ranges like [A-Z] depend on the locale's collation order.
case $job_id in
  '' | *[!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-]*) bad_id=1 ;;
  *) bad_id=0 ;;
esac
if [ "$bad_id" = 1 ] || [ "${#job_id}" -gt 64 ]; then
  printf 'jobkit-wrapper: invalid job id (allowed: 1-64 of A-Z a-z 0-9 _ -)\n' >&2
  exit 65
fi

grace=${JOBKIT_KILL_GRACE:-10}
lock_timeout=${JOBKIT_LOCK_TIMEOUT:-10}
db_timeout=${JOBKIT_DB_TIMEOUT_MS:-5000}
db_retries=${JOBKIT_DB_RETRIES:-6}
for v in "$grace" "$lock_timeout" "$db_timeout" "$db_retries"; do
  case $v in '' | *[!0123456789]*)
    printf 'jobkit-wrapper: JOBKIT_KILL_GRACE, JOBKIT_LOCK_TIMEOUT, JOBKIT_DB_TIMEOUT_MS and JOBKIT_DB_RETRIES must be whole numbers\n' >&2
    exit 64 ;;
  esac
done
output=${JOBKIT_OUTPUT:-}
case $output in
  '' | files) ;;
  *) printf 'jobkit-wrapper: JOBKIT_OUTPUT must be unset, empty or "files"\n' >&2; exit 64 ;;
esac
# JOBKIT_DB=none: no server.db record (a batch scheduler's shared filesystem, where SQLite is
# unsafe): the state file is the wrapper's only record, the scheduler's accounting the other one.
db_mode=${JOBKIT_DB:-sqlite}
case $db_mode in
  sqlite | none) ;;
  *) printf 'jobkit-wrapper: JOBKIT_DB must be unset, empty, "sqlite" or "none"\n' >&2; exit 64 ;;
esac

base=${JOBKIT_BASE_DIR:-}
if [ -z "$base" ]; then
  if [ -z "${HOME:-}" ]; then
    printf 'jobkit-wrapper: neither JOBKIT_BASE_DIR nor HOME is set\n' >&2
    exit 73
  fi
  base=$HOME/.jobkit
fi
jobs_dir=$base/jobs
db=$base/server.db
state=$jobs_dir/$job_id.status
log=$jobs_dir/$job_id.wrapper.log
tmp=$jobs_dir/.$job_id.status.$$.tmp
pre=$jobs_dir/.$job_id.db.$$.tmp
wtmp=$tmp
job_out='' job_err=''
[ "$output" != files ] || { job_out=$jobs_dir/$job_id.out job_err=$jobs_dir/$job_id.err; }

# --- signals: installed before any state is written ---------------------------------------
sig_name='' sig_num='' sig_pending=0 job_pid='' timer_pid='' reaped=0 db_run_pid=''


# signal_group SIG PGID: its status says whether the group was signalled. kill's syntax for a
# negative pid is decided once, by a builtin call: dash, mksh and procps kill(1) need `--` before
# it; BusyBox rejects `--` ("invalid number") yet still signals the group, so trying one form and
# then the other would report the second one's ESRCH for a group the first one just killed.
if kill -s 0 -- "$$" 2>/dev/null; then
  signal_group() { kill -s "$1" -- "-$2" 2>/dev/null; }
else
  signal_group() { kill -s "$1" "-$2" 2>/dev/null; }
fi

start_timer() { # after the grace period, SIGKILL whatever is left of the job's group
  [ -z "$timer_pid" ] || return 0
  ( # redirections inside the subshell: yash forks twice for `( ... ) <file &` and $! would lie
    exec </dev/null >/dev/null 2>&1
    # Only the wrapper's TERM stops it (see stop_timer).
    trap '' HUP INT QUIT PIPE USR1 USR2
    s=''
    trap '[ -z "$s" ] || kill "$s" 2>/dev/null; exit 3' TERM
    sleep "$grace" &
    s=$!
    # Once the grace is over, a late TERM from the wrapper must not turn a kill that happened
    # into "no forced kill": stop listening before sending it. Forced means what happened: the
    # group still had a live member and was sent SIGKILL (exit 0).
    wait "$s" && { trap '' TERM; group_alive "$job_pid" && signal_group KILL "$job_pid"; }
  ) &
  timer_pid=$!
}

# shellcheck disable=SC2317 # invoked from traps
on_signal() { # NAME NUMBER
  [ "$reaped" = 0 ] || return 0
  sig_pending=1
  [ -n "$sig_name" ] || { sig_name=$1; sig_num=$2; }
  [ -n "$job_pid" ] || return 0
  signal_group "$1" "$job_pid" || kill -s "$1" "$job_pid" 2>/dev/null
  start_timer
}
trap 'on_signal HUP 1' HUP
trap 'on_signal INT 2' INT
trap 'on_signal QUIT 3' QUIT
trap 'on_signal PIPE 13' PIPE
trap 'on_signal TERM 15' TERM
trap 'on_signal USR1 10' USR1
trap 'on_signal USR2 12' USR2

group_alive() { # PGID: is a live process left in the group? Zombies do not count: whoever
  # adopted them (pid 1 of a container, a sandbox's init) may reap them late.
  signal_group 0 "$1" || return 1
  for st in /proc/[0-9]*/stat; do
    g_line=''
    { read -r g_line <"$st"; } 2>/dev/null || continue
    set -f
    # shellcheck disable=SC2086 # deliberate field splitting: state ppid pgrp ...
    set -- "$1" ${g_line##*") "}
    set +f
    [ "$#" -ge 4 ] && [ "$4" = "$1" ] && [ "$2" != Z ] && return 0
    set -- "$1"
  done
  return 1
}

child_running() { # PID: a child of this shell that has not exited (an exited child is a zombie
  # until reaped, or already gone; the parent check keeps a reused pid from counting)
  c_line=''
  { read -r c_line <"/proc/$1/stat"; } 2>/dev/null || return 1
  set -f
  # shellcheck disable=SC2086 # deliberate field splitting: state ppid ...
  set -- ${c_line##*") "}
  set +f
  [ "$#" -ge 2 ] && [ "$1" != Z ] && [ "$2" = "$$" ]
}

child_unreaped() { # PID: a child of this shell that has not been reaped (running or a zombie)
  c_line=''
  { read -r c_line <"/proc/$1/stat"; } 2>/dev/null || return 1
  set -f
  # shellcheck disable=SC2086 # deliberate field splitting: state ppid ...
  set -- ${c_line##*") "}
  set +f
  [ "$#" -ge 2 ] && [ "$2" = "$$" ]
}

stop_timer() { # TERM to the timer and to its sleep: dash, BusyBox ash and mksh lose a TERM that
  # arrives before the timer's trap is installed, and yash never runs the traps of a subshell
  # forked from a trap action (the timer starts in one); the sleep dying ends the timer as well.
  for st in /proc/[0-9]*/stat; do
    c_line=''
    { read -r c_line <"$st"; } 2>/dev/null || continue
    set -f
    # shellcheck disable=SC2086 # deliberate field splitting: state ppid ...
    set -- ${c_line##*") "}
    set +f
    [ "$#" -ge 2 ] && [ "$2" = "$timer_pid" ] && kill -s TERM "${c_line%% *}" 2>/dev/null
  done
  kill -s TERM "$timer_pid" 2>/dev/null
}

# --- diagnostics: a log file first; stderr only best effort (it may be a hung-up terminal) --
say() { (trap '' PIPE; printf 'jobkit-wrapper: %s: %s\n' "$job_id" "$1" >&2); }
warn() {
  { printf 'jobkit-wrapper[%s] %s: %s\n' "$$" "$job_id" "$1" >>"$log"; } 2>/dev/null
  say "$1"
}

# --- encoding ---------------------------------------------------------------------------------
json_escape() { # sets `esc` to VALUE as the body of a JSON string (RFC 8259 section 7):
  # quote, backslash and control characters escaped; bytes >= 0x80 (UTF-8) passed through.
  case $1 in
    *[!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789\ ._:/@=,+\(\)-]*)
      esc=$(printf '%s' "$1" | LC_ALL=C awk '
        BEGIN { for (i = 1; i < 32; i++) e[sprintf("%c", i)] = sprintf("\\u%04x", i); e[sprintf("%c", 127)] = "\\u007f"
                e["\""] = "\\\""; e["\\"] = "\\\\"; e["\n"] = "\\n"; e["\t"] = "\\t"; e["\r"] = "\\r" }
        { if (NR > 1) printf "\\n"; n = length($0)
          for (i = 1; i <= n; i++) { c = substr($0, i, 1); printf "%s", ((c in e) ? e[c] : c) } }') ;;
    *) esc=$1 ;;
  esac
}
jstr() { # JSON token for a string, or null when empty
  if [ -z "$1" ]; then tok=null; else json_escape "$1"; tok="\"$esc\""; fi
}
jnum() { tok=${1:-null}; }
sql_text() { # SQL literal for a string, or NULL when empty
  if [ -z "$1" ]; then tok=NULL; return; fi
  case $1 in
    *\'*) tok="'$(printf '%s' "$1" | sed "s/'/''/g")'" ;;
    *) tok="'$1'" ;;
  esac
}

# --- facts about this run ---------------------------------------------------------------------
now() { # sets now_iso and now_epoch (no `date -I`: BusyBox and BSD may lack it)
  now_iso='' now_epoch=''
  n=$(date -u '+%Y-%m-%dT%H:%M:%SZ %s' 2>/dev/null) || return 0
  now_iso=${n% *} now_epoch=${n#* }
}
proc_start_of() { # PID -> sets proc_start: /proc/PID/stat field 22, parsed after the last ')'
  proc_start=
  line=
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || [ -n "$line" ] || return 0
  set -f
  # shellcheck disable=SC2086 # deliberate field splitting of the stat line
  set -- ${line##*") "}
  set +f
  [ "$#" -ge 20 ] || return 0
  shift 19
  proc_start=$1
}

user=${USER:-${LOGNAME:-}}
[ -n "$user" ] || user=$(id -un 2>/dev/null)
host=
{ read -r host </proc/sys/kernel/hostname; } 2>/dev/null || host=$(uname -n 2>/dev/null)
boot_id=
{ read -r boot_id </proc/sys/kernel/random/boot_id; } 2>/dev/null
case $boot_id in *[!0123456789abcdef-]*) boot_id= ;; esac

# The wrapper's own start time: with its pid, it tells this wrapper from a later process that
# reuses the pid (a reconciler deciding "wrapper gone", a cancel deciding whom to signal).
proc_start_of "$$"
wrapper_start=$proc_start
status='' exit_code='' started_at='' started_epoch='' completed_at='' completed_epoch='' proc_start=''
forced_kill=false db_state=pending db_detail=''
db_ok=ok # the database's outcome when all goes well
[ "$db_mode" != none ] || db_ok=none

# --- the state file ---------------------------------------------------------------------------
# Written to a temp file of this wrapper's own (pid in the name), read back, flushed, renamed
# over the state file, then the directory flushed: a reader sees the old or the new JSON, never
# a part, and a failed write leaves the previous state in place. Each state file has exactly one
# writer (the id is claimed with O_EXCL at start) and rename(2) is atomic, so no lock is needed:
# there is no lock descriptor for the job to inherit, no lock to time out, and nothing to fall
# back from where flock(1) is missing.
write_state() { # [running|final|annotate]; writes through the temp file $wtmp
  # A final state also prepares, in the file $pre, the rewrite that adds the database's outcome
  # as it is when all goes well ($db_ok), flushed by the same sync: once the database has
  # answered so, that rewrite is a rename alone. Removed whenever the final write fails.
  jstr "$status"; t_status=$tok
  jnum "$exit_code"; t_exit=$tok
  jstr "$sig_name"; t_sig=$tok
  jstr "$started_at"; t_sa=$tok
  jnum "$started_epoch"; t_se=$tok
  jstr "$completed_at"; t_ca=$tok
  jnum "$completed_epoch"; t_ce=$tok
  jstr "$user"; t_user=$tok
  jstr "$host"; t_host=$tok
  jnum "$job_pid"; t_pid=$tok
  jnum "$proc_start"; t_ps=$tok
  jstr "$boot_id"; t_boot=$tok
  jstr "$db_state"; t_db=$tok
  jstr "$db_detail"; t_dbd=$tok
  head="{\"version\":$JOBKIT_WRAPPER_VERSION,\"id\":\"$job_id\",\"status\":$t_status,\"exit_code\":$t_exit,\"signal\":$t_sig,\"forced_kill\":$forced_kill,\"started_at\":$t_sa,\"started_epoch\":$t_se,\"completed_at\":$t_ca,\"completed_epoch\":$t_ce,\"user\":$t_user,\"host\":$t_host,\"pid\":$t_pid,\"pgid\":$t_pid,\"proc_start\":$t_ps,\"boot_id\":$t_boot,\"wrapper_pid\":$$,\"wrapper_start\":${wrapper_start:-null},\"db\":"
  json="$head$t_db,\"db_detail\":$t_dbd}"
  back='' pre_sync=''
  if [ "${1:-}" = final ]; then
    pre_json="$head\"$db_ok\",\"db_detail\":null}"
    if { printf '%s\n' "$pre_json" >"$pre"; } 2>/dev/null && { read -r back <"$pre"; } 2>/dev/null &&
      [ "$back" = "$pre_json" ]; then
      pre_sync=$pre
    else
      rm -f -- "$pre" 2>/dev/null
    fi
    back=
  fi
  if { printf '%s\n' "$json" >"$wtmp"; } 2>/dev/null &&
    { read -r back <"$wtmp"; } 2>/dev/null && [ "$back" = "$json" ] &&
    { sync -- "$wtmp" ${pre_sync:+"$pre_sync"} || sync; } 2>/dev/null && mv -f -- "$wtmp" "$state" 2>/dev/null; then
    # The directory is flushed after a final state (the final one is written in the background
    # while the database is waited for). The running state needs no flush of its own (the final
    # one's covers the directory; a crash before it finds no file or the complete running JSON),
    # nor does the rewrite that only adds the database outcome to a final state already flushed
    # (a crash finds one or the other).
    case ${1:-} in
      running | annotate) ;;
      *) sync -- "$jobs_dir" 2>/dev/null ;;
    esac
    return 0
  fi
  rm -f -- "$wtmp" ${pre_sync:+"$pre_sync"} 2>/dev/null
  warn "state file write failed (status=$status): previous state kept"
  return 1
}

# --- the server database ----------------------------------------------------------------------
nl='
'
db_nockpt='.dbconfig no_ckpt_on_close on'
db_update() { # SET-clause [running]; sets db_state (ok|locked|missing|corrupt|wrong_schema|no_row|no_sqlite3|error)
  db_detail=
  if [ "$db_mode" = none ]; then db_state=none; return 0; fi # no database: nothing to record there
  where="id = '$job_id'" changes='changes()'
  if [ "${2:-}" = running ]; then
    # The final UPDATE runs beside this one and may commit first: never write over a final
    # status (a row already final counts as this update's success, not as a missing row).
    where="$where AND status IN ('queued', 'running')"
    changes="changes() + (SELECT count(*) FROM jobs WHERE id = '$job_id' AND status NOT IN ('queued', 'running'))"
  fi
  if ! command -v sqlite3 >/dev/null 2>&1; then
    db_state=no_sqlite3
    warn "sqlite3 not found on PATH; state recorded in the state file only (db=no_sqlite3)"
    return 1
  fi
  if [ ! -f "$db" ]; then # opening a missing path would silently create an empty database
    db_state=missing
    warn "database $db does not exist; state recorded in the state file only (db=missing)"
    return 1
  fi
  attempt=0
  while :; do
    attempt=$((attempt + 1))
    # synchronous=NORMAL: in WAL mode a commit needs no fsync, so the write lock is held for
    # microseconds, not an fsync; the state file (fsynced) carries durability. For the same
    # reason no checkpoint on close (it fsyncs the log and the database, ~4 fsyncs on the job's
    # critical path): the next writer's automatic checkpoint or the client's next connection
    # does it. A sqlite3 without `.dbconfig` (before 3.24) refuses the option: it is dropped.
    out=$(sqlite3 -batch -bail -cmd ".timeout $db_timeout" -cmd "PRAGMA synchronous=NORMAL" \
      ${db_nockpt:+-cmd} ${db_nockpt:+"$db_nockpt"} "$db" \
      "BEGIN IMMEDIATE; UPDATE jobs SET $1 WHERE $where; SELECT 'changes=' || ($changes); COMMIT;" 2>&1)
    rc=$?
    # `.dbconfig` prints the setting (or, for a name it does not know, an error and goes on):
    # the UPDATE's own answer is the last line
    [ "$rc" != 0 ] || [ -z "$db_nockpt" ] || out=${out##*"$nl"}
    if [ "$rc" != 0 ] && [ -n "$db_nockpt" ]; then
      case $out in *'unknown command'*) db_nockpt='' attempt=$((attempt - 1)); continue ;; esac
    fi
    case $rc:$out in
      0:changes=1) db_state=ok; return 0 ;;
      0:changes=0)
        db_state=no_row
        warn "no row with this id in table jobs; state recorded in the state file only (db=no_row)"
        return 1 ;;
      *'database is locked'* | *'database is busy'* | *'(5)'*)
        db_state=locked
        if [ "$attempt" -lt "$db_retries" ]; then continue; fi
        warn "database locked after $attempt attempts of ${db_timeout}ms; state recorded in the state file only (db=locked)" ;;
      *'not a database'* | *malformed* | *'(26)'* | *'(11)'*)
        db_state=corrupt
        warn "database is corrupt or not a database; state recorded in the state file only (db=corrupt)" ;;
      *'no such table'* | *'no such column'* | *'has no column'*)
        db_state=wrong_schema
        warn "database has no usable jobs table; state recorded in the state file only (db=wrong_schema)" ;;
      *)
        db_state=error
        warn "database update failed (exit $rc); state recorded in the state file only (db=error)" ;;
    esac
    db_detail=$(printf '%s' "$out" | head -n 3 | tr '\n' ' ')
    return 1
  done
}

db_start() { # SET-clause running: the running UPDATE in the background
  (
    exec </dev/null >/dev/null
    trap - HUP INT QUIT PIPE TERM USR1 USR2
    db_update "$1" running
  ) &
  db_run_pid=$!
}

# --- start ------------------------------------------------------------------------------------
finish_without_job() { # CODE REASON: record failure where possible and exit without running
  now
  status=failed exit_code=$1 completed_at=$now_iso completed_epoch=$now_epoch
  sql_text "$sig_name"; s_sig=$tok
  db_update "status = 'failed', exit_code = $1, signal = $s_sig, completed_at = '$now_iso', completed_epoch = ${now_epoch:-NULL}" >/dev/null 2>&1
  write_state
  warn "$2"
  exit "$1"
}


cannot_write() { # REASON: the state directory is unusable; record failed/73 where the DB is usable
  say "cannot write the state directory $jobs_dir ($1)"
  now
  db_update "status = 'failed', exit_code = 73, completed_at = '$now_iso', completed_epoch = ${now_epoch:-NULL}" >/dev/null 2>&1
  exit 73
}

[ -d "$jobs_dir" ] || mkdir -p -- "$jobs_dir" 2>/dev/null
# Output files that are already there belong to someone: the id is used, and they are kept.
if [ -n "$job_out" ] && { [ -e "$job_out" ] || [ -e "$job_err" ]; }; then
  say "job id already used ($job_out or $job_err exists)"
  exit 67
fi
# Claim the id atomically: create the log empty with O_EXCL (noclobber), which makes this wrapper
# the only writer of the state file, then write to it, which proves the state directory can take
# data. Two steps, because a full disk with free inodes lets the file be created and refuses
# its first byte: that is "cannot write" (73), not "already used" (67).
set -C
claimed=0
{ true >"$log" && claimed=1; } 2>/dev/null # not `:`: a special builtin's redirection error exits the shell
set +C
if [ "$claimed" = 0 ]; then
  if [ -e "$log" ] || [ -e "$state" ]; then
    say "job id already used ($log exists)"
    exit 67
  fi
  cannot_write "cannot create files"
fi
{ printf 'jobkit-wrapper[%s] %s: claimed (start %s)\n' "$$" "$job_id" "$wrapper_start" >>"$log"; } 2>/dev/null ||
  cannot_write "no space for data: the disk is full"

# SQLite locking, WAL and flock are unreliable on network filesystems: refuse them (unless no
# database is used: JOBKIT_DB=none, the state file alone is written, by rename).
env_default=''
netfs_types=${JOBKIT_NETFS_TYPES-nfs nfs4 cifs smb3 smbfs 9p fuse.sshfs}
if [ "${JOBKIT_ALLOW_NETFS:-0}" != 1 ] && [ "$db_mode" != none ] && [ -n "$netfs_types" ] && [ -r /proc/mounts ]; then
  # Is there a network mount at all? The state directory's real path (one fork) is only needed
  # when there is one. /proc/mounts is read by one cat (the shell's `read` takes it byte by
  # byte: 3 ms in dash, 14 ms in BusyBox ash), under `env --default-signal`, which tells at
  # the same time whether that env can restore the job's INT/QUIT (no probe of its own later).
  # A type is the third field: ` TYPE ` (a mount point starts with /, a device starts the line).
  any_net=0 mounts_read=0
  if mounts=$(env --default-signal=INT,QUIT cat /proc/mounts 2>/dev/null); then
    env_default=yes mounts_read=1
  elif mounts=$(cat /proc/mounts 2>/dev/null); then
    mounts_read=1
  fi
  if [ "$mounts_read" = 1 ]; then
    for t in $netfs_types; do
      case $mounts in *" $t "*) any_net=1; break ;; esac
    done
  else
    while read -r _dev _mnt typ _rest; do
      case " $netfs_types " in *" $typ "*) any_net=1; break ;; esac
    done </proc/mounts
  fi
  mounts=''
  if [ "$any_net" = 1 ]; then
    real=$(cd -P -- "$jobs_dir" 2>/dev/null && pwd -P)
    best='' fs_type=''
    while read -r _dev mnt typ _rest; do
      case $mnt in
        /) match=1 ;;
        *) case $real/ in "$mnt"/*) match=1 ;; *) match=0 ;; esac ;;
      esac
      if [ "$match" = 1 ] && [ "${#mnt}" -ge "${#best}" ]; then best=$mnt fs_type=$typ; fi
    done </proc/mounts
    for t in $netfs_types; do
      if [ "$fs_type" = "$t" ]; then
        say "state directory $jobs_dir is on a network filesystem ($fs_type); set JOBKIT_BASE_DIR to a local one (or JOBKIT_ALLOW_NETFS=1)"
        exit 66
      fi
    done
  fi
fi

# The job's output files, created only now that the claim makes this wrapper their only writer
# (a second start of the id exits 67 above and never opens them). Created empty here, where a
# failure is 73, and opened by the job's own process just before it execs the command.
if [ -n "$job_out" ]; then
  set -C
  made=0
  { true >"$job_out" && true >"$job_err" && made=1; } 2>/dev/null
  set +C
  [ "$made" = 1 ] || cannot_write "cannot create the job's output files"
fi

[ -z "$sig_name" ] || finish_without_job "$((128 + sig_num))" "received SIG$sig_name before the job started"

# The job runs in the background, in its own session and process group, stdin from /dev/null.
# Async lists ignore INT and QUIT in a shell without job control: restore them for the job.
# If the shell already made it a group leader, setsid would fork and $! would lie. No redirection
# on the subshell itself: yash forks twice for `( ... ) <file &` and $! would name the outer one.
# The job's argv is exec'd literally whatever its first word looks like (FOO=1, -i, --, -): it
# always follows a program that execs its operands as given (setsid after `--`, perl's exec
# LIST), never env(1) (GNU env takes NAME=VALUE operands as assignments even after `--`) and
# never a bare `exec` before an option-like word (bash, zsh, ksh, yash, mksh and BusyBox ash
# parse options of exec; dash and posh take `--` for the command).
(
  trap - HUP INT QUIT PIPE TERM USR1 USR2
  # The job's stdout and stderr go to its files (appended: the wrapper created them empty). Only
  # fds 1 and 2 point there; `command` keeps a failed redirection from exiting the subshell.
  if [ -n "$job_out" ]; then command exec >>"$job_out" 2>>"$job_err" || exit 73; fi
  read -r self_pid _ _ _ self_pgrp _ </proc/self/stat 2>/dev/null
  # dash and BusyBox ash give async lists SIGINT/SIGQUIT ignored for good (`trap -` cannot undo
  # it): restore them with env(1) or perl where either can, so the job can be interrupted.
  restore='' ign=''
  if [ "$env_default" = yes ]; then
    restore=gnu_env # GNU env >= 8.31, asked with the mounts read above: it sets INT/QUIT to
    # their defaults whether or not they were ignored, no need to read /proc/self/status
  else
    while read -r k v; do [ "$k" = SigIgn: ] && { ign=$v; break; }; done </proc/self/status 2>/dev/null
    case ${ign#"${ign%?}"} in
      [234567abcdef])
        # GNU env >= 8.31 (asked here when the mounts were not read: it prints the env)
        if env --default-signal=INT,QUIT >/dev/null 2>&1; then
          restore=gnu_env
        elif command -v perl >/dev/null 2>&1; then
          restore=perl
        fi ;;
    esac
  fi
  # shellcheck disable=SC2016 # perl code
  perl_exec='$SIG{INT} = $SIG{QUIT} = "DEFAULT"; exec { $ARGV[0] } @ARGV;
    print STDERR "$ARGV[0]: $!\n"; exit($!{ENOENT} ? 127 : 126)'
  if [ -n "$self_pid" ] && [ "$self_pid" = "$self_pgrp" ]; then
    # Already a group leader (job control): exec in place. Only perl can restore the signals
    # here (env cannot exec an argv literally); with job control they are not ignored anyway.
    [ "$restore" != perl ] || exec perl -e "$perl_exec" -- "$@" </dev/null
    case $1 in
      -*) # `exec --` where exec parses options (probed without PATH: a program named -- must not answer)
        # shellcheck disable=SC2123,SC3038 # deliberately no PATH; exec -- only where it is accepted
        (PATH=/nonexistent; exec -- /bin/sh -c :) 2>/dev/null && exec -- "$@" </dev/null ;;
    esac
    exec "$@" </dev/null
  fi
  case $restore in
    gnu_env) exec env --default-signal=INT,QUIT -- setsid -- "$@" </dev/null ;;
    perl) exec perl -e "$perl_exec" -- setsid -- "$@" </dev/null ;;
  esac
  exec setsid -- "$@" </dev/null
) &
job_pid=$!
[ -z "$sig_name" ] || { signal_group "$sig_name" "$job_pid" || kill -s "$sig_name" "$job_pid"; start_timer; } 2>/dev/null
# The running state says pgid = pid: make it true before writing it. setsid runs a moment after
# the fork (an exec away); until then the group does not exist and `kill -- -PGID` by a reader
# of the state file would find no such process. Builtin reads of /proc only, bounded (a system
# without /proc, or a child that cannot become a group leader, just goes on).
j_n=0
while [ "$j_n" -lt 3000 ]; do
  j_line=''
  { read -r j_line <"/proc/$job_pid/stat"; } 2>/dev/null || break
  j_rest=${j_line##*") "}
  j_st=${j_rest%% *}
  j_rest=${j_rest#* }
  j_rest=${j_rest#* }
  if [ "$j_st" = Z ] || [ "${j_rest%% *}" = "$job_pid" ]; then break; fi
  j_n=$((j_n + 1))
done

# The start: the job's start time (a job reaped meanwhile has none left), whether the job is
# already over (a zombie, or gone: a `true`), then the clock. A job over before the clock is
# read (job_over=1) gets no running state (the final one would replace it at once) and no second
# reading of the clock: this one is already later than its end. A job found over just after the
# clock is read (job_over=2) gets no running state either, but its end is read from the clock
# again (it may have ended after this reading). Only where /proc answered for this wrapper
# itself (without it a job cannot be seen to be over), and not in posh: its `wait` then
# misparses its operand now and then (`wait: invalid option`, status 1) once the job has been
# reaped, and the job's status would be lost.
proc_start_of "$job_pid"
job_over=0 may_skip=1
[ -z "$sig_name" ] && [ -n "$wrapper_start" ] && [ -z "${POSH_VERSION:-}" ] || may_skip=0
[ "$may_skip" = 0 ] || child_running "$job_pid" || job_over=1
now
[ "$job_over" != 0 ] || [ "$may_skip" = 0 ] || child_running "$job_pid" || job_over=2
started_at=$now_iso started_epoch=$now_epoch status=running
[ "$job_over" != 0 ] || write_state running
sql_text "$user"; s_user=$tok
sql_text "$host"; s_host=$tok
sql_text "$boot_id"; s_boot=$tok
# The running row is written in the background, overlapping the job. It only changes a row that
# is not final yet, and the final UPDATE carries the start fields too: whichever commits first,
# the database never shows `running` after the final status, and the final row is complete.
# A job already over by now (a zombie, or gone) skips it: the final UPDATE follows at once with
# the same start fields, and a second sqlite3 would only contend with it for the write lock.
start_set="started_at = '$started_at', started_epoch = ${started_epoch:-NULL}, pid = $job_pid, pgid = $job_pid, proc_start = ${proc_start:-NULL}, boot_id = $s_boot, user = $s_user, host = $s_host"
[ "$job_over" != 0 ] || db_start "status = 'running', $start_set" running

# --- wait: a trapped signal interrupts `wait`; wait again until the job is really gone ------
wait "$job_pid"
rc=$?
# A `wait` that returned while the job is still this shell's child (running, or exited and not
# reaped), with no signal to explain it, did not wait (posh's `wait` can misparse its operand as
# options and return 1 at once, whether the job runs or already exited): wait again, never
# record its own error as the job's status. Bounded: a shell whose wait never reaps must not spin.
w_n=0
while [ "$sig_pending" != 1 ] && [ "$w_n" -lt 100 ] && child_unreaped "$job_pid"; do
  wait "$job_pid"
  rc=$?
  w_n=$((w_n + 1))
done
while [ "$sig_pending" = 1 ]; do
  sig_pending=0
  if kill -0 "$job_pid" 2>/dev/null; then # alive, or a zombie not yet reaped
    wait "$job_pid"
    rc=$?
  else # already reaped; bash may still hold its status
    wait "$job_pid" 2>/dev/null
    r=$?
    [ "$r" = 127 ] || rc=$r
  fi
done
reaped=1
trap '' HUP INT QUIT PIPE TERM USR1 USR2 # cleanup always runs to the end

if [ -n "$timer_pid" ]; then
  # Group members that ignored the forwarded signal die by the timer's SIGKILL. As soon as the
  # group is dead the timer is stopped, again at every poll until it is gone. Polled, never a
  # blocking wait: right after the leader is reaped a dying member may still look alive, and
  # the wait would last the whole grace.
  nap=0.05 polls=0
  while child_running "$timer_pid"; do
    group_alive "$job_pid" || stop_timer
    sleep "$nap" 2>/dev/null || { nap=1; sleep 1; } # no fractional sleep: whole seconds
    polls=$((polls + 1))
    [ "$polls" != 20 ] || [ "$nap" != 0.05 ] || nap=0.25 # after a second, a cheaper pace
  done
  wait "$timer_pid"
  timer_rc=$?
  [ "$timer_rc" != 0 ] || forced_kill=true
fi

[ "$rc" -le 255 ] || rc=$((128 + rc % 128)) # ksh93 reports 256+n, yash 384+n
if [ -n "$sig_name" ]; then
  status=failed exit_code=$((128 + sig_num))
elif [ "$rc" = 0 ]; then
  status=completed exit_code=0
else
  status=failed exit_code=$rc
  if [ "$rc" -gt 128 ]; then
    case $((rc - 128)) in
      1) sig_name=HUP ;; 2) sig_name=INT ;; 3) sig_name=QUIT ;; 4) sig_name=ILL ;;
      6) sig_name=ABRT ;; 7) sig_name=BUS ;; 8) sig_name=FPE ;; 9) sig_name=KILL ;;
      10) sig_name=USR1 ;; 11) sig_name=SEGV ;; 12) sig_name=USR2 ;; 13) sig_name=PIPE ;;
      14) sig_name=ALRM ;; 15) sig_name=TERM ;; 24) sig_name=XCPU ;; 25) sig_name=XFSZ ;;
    esac
  fi
fi
[ "$job_over" = 1 ] || now # a job over before the start's reading ended before it
completed_at=$now_iso completed_epoch=$now_epoch

# The final state file first, in the background: the database may keep us waiting, and must
# never cost us this write. The final UPDATE runs beside it; then the file records its outcome:
# the prepared rewrite renamed in when the database answered as expected, else written anew.
# The background writer is waited for until it is really gone (posh's `wait`, see above): the
# rewrite must never be renamed before the final state.
db_state=pending db_detail=''
write_state final &
final_pid=$!
sql_text "$sig_name"; s_sig=$tok
db_update "status = '$status', exit_code = $exit_code, signal = $s_sig, completed_at = '$completed_at', completed_epoch = ${completed_epoch:-NULL}, $start_set"
wait "$final_pid" 2>/dev/null
w_n=0
while [ "$w_n" -lt 100 ] && child_unreaped "$final_pid"; do
  wait "$final_pid" 2>/dev/null
  w_n=$((w_n + 1))
done
if [ "$db_state" != "$db_ok" ] || [ -n "$db_detail" ] || [ ! -f "$pre" ] || ! mv -f -- "$pre" "$state" 2>/dev/null; then
  wtmp=$pre
  write_state annotate
fi
[ -z "$db_run_pid" ] || wait "$db_run_pid" 2>/dev/null
exit "$exit_code"

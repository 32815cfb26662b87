# Shared helpers for the wrapper's bats tests. The shell under test comes from
# JOBKIT_TEST_SHELL (a command line such as "dash", "busybox sh" or "/path/to/sh"); default dash.
# shellcheck shell=bash

ROOT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
WRAPPER=$ROOT/wrapper/job_wrapper.sh
SCHEMA=$ROOT/wrapper/server_schema.sql
read -r -a TEST_SH <<<"${JOBKIT_TEST_SHELL:-dash}"
TEST_SH[0]=$(type -P "${TEST_SH[0]}") # absolute: some tests run the wrapper with a reduced PATH

load "$ROOT/node_modules/bats-support/load.bash"
load "$ROOT/node_modules/bats-assert/load.bash"

# A fresh base directory with the server schema, short grace period and the default DB timeout.
setup_base() {
  BASE=$BATS_TEST_TMPDIR/base
  mkdir -p "$BASE"
  sqlite3 "$BASE/server.db" <"$SCHEMA" >/dev/null
  export JOBKIT_BASE_DIR=$BASE JOBKIT_KILL_GRACE=1
  unset JOBKIT_DB_TIMEOUT_MS JOBKIT_DB_RETRIES JOBKIT_NETFS_TYPES
}

# hold_db SECONDS: an exclusive transaction on server.db from another connection
hold_db() { printf 'BEGIN EXCLUSIVE;\nUPDATE jobs SET host = host;\n.system sleep %s\nCOMMIT;\n' "$1" | sql >/dev/null; }

# sql ARGS...: sqlite3 on the test's server.db with a busy timeout (a wrapper may be writing it)
sql() { sqlite3 -cmd '.timeout 5000' "$BASE/server.db" "$@"; }

add_row() { sql "INSERT INTO jobs (id) VALUES ('$1')"; }

# Run the wrapper with the shell under test, its signals at their defaults as tmux and sshd
# start it: a background process of a non-interactive shell starts with INT and QUIT ignored,
# `nohup` (or a CI runner) may have HUP ignored, and a shell cannot trap a signal that was
# ignored on entry.
FORWARDED_SIGNALS=HUP,INT,QUIT,PIPE,TERM,USR1,USR2
# WRAPPER_PATH, when set, is the PATH the wrapper runs with (bats itself keeps the normal one);
# WRAPPER_SH_OPT, when set, one option for the shell running it (e.g. -m).
wrapper() {
  env ${WRAPPER_PATH:+PATH="$WRAPPER_PATH"} --default-signal="$FORWARDED_SIGNALS" "${TEST_SH[@]}" \
    ${WRAPPER_SH_OPT:+"$WRAPPER_SH_OPT"} "$WRAPPER" "$@"
}
# start_wrapper ARGS...: in the background; WPID is the wrapper's own pid (not a subshell's)
start_wrapper() {
  env --default-signal="$FORWARDED_SIGNALS" "${TEST_SH[@]}" "$WRAPPER" "$@" &
  WPID=$! # read by the tests
  export WPID
}

state_file() { printf '%s/jobs/%s.status' "$BASE" "$1"; }
# jq -e fails on anything but one complete JSON document
field() { jq -er ".$2 | if . == null then \"null\" else tostring end" "$(state_file "$1")"; }
db_field() { sql "SELECT $2 FROM jobs WHERE id = '$1'"; }

# wait_status ID STATUS [SECONDS]: poll the state file until its status is STATUS
wait_status() {
  local deadline=$((SECONDS + ${3:-10}))
  while ((SECONDS < deadline)); do
    [ "$(jq -r .status "$(state_file "$1")" 2>/dev/null)" = "$2" ] && return 0
    sleep 0.05
  done
  echo "state of $1 never became $2: $(cat "$(state_file "$1")" 2>&1)" >&2
  return 1
}

# assert_final ID STATUS EXIT_CODE SIGNAL: state file and DB row agree on a final record
assert_final() {
  assert_equal "$(field "$1" status)" "$2"
  assert_equal "$(field "$1" exit_code)" "$3"
  assert_equal "$(field "$1" signal)" "$4"
  assert_equal "$(field "$1" db)" ok
  assert_equal "$(db_field "$1" status)" "$2"
  assert_equal "$(db_field "$1" exit_code)" "$3"
  assert_equal "$(db_field "$1" "coalesce(signal, 'null')")" "$4"
}

# A PATH of symlinks to the tools the wrapper may use, minus those named.
path_without() {
  local dir
  dir=$BATS_TEST_TMPDIR/path-without-$(printf '%s-' "$@")
  mkdir -p "$dir"
  local t p
  for t in sh dash bash busybox mksh yash zsh posh env sqlite3 flock date mkdir mv rm sync sleep kill \
    setsid awk sed head tr id uname cat ls jq true false printf readlink; do
    case " $* " in *" $t "*) continue ;; esac
    p=$(type -P "$t") && ln -sf "$p" "$dir/$t"
  done
  printf '%s' "$dir"
}

# pid of the job (the wrapper's child) once the running state is written
job_pid() { field "$1" pid; }

# group_gone PGID: no live process of that group is left. Zombies do not count: they are dead,
# and whoever is pid 1 in a container or sandbox may reap orphans late.
group_alive() { ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { n++ } END { exit !n }'; }
group_gone() {
  local deadline=$((SECONDS + 2))
  while group_alive "$1"; do
    ((SECONDS < deadline)) || { ps -eo pid,pgid,stat,args | awk -v g="$1" 'NR == 1 || $2 == g' >&2; return 1; }
    sleep 0.05
  done
}

# now_ms: milliseconds since the epoch
now_ms() { date +%s%3N; }

# wait_group_has PGID COMM [SECONDS]: poll until a live process named COMM is in the group
wait_group_has() {
  local deadline=$((SECONDS + ${3:-10}))
  until ps -eo pgid=,stat=,comm= | awk -v g="$1" -v c="$2" '$1 == g && $2 !~ /^Z/ && $3 == c { n++ } END { exit !n }'; do
    ((SECONDS < deadline)) || { echo "no live $2 in group $1" >&2; return 1; }
    sleep 0.02
  done
}

# wait_final ID [SECONDS]: poll the state file until it is final (completed or failed)
wait_final() {
  local deadline=$((SECONDS + ${2:-10}))
  until [[ $(jq -r .status "$(state_file "$1")" 2>/dev/null) =~ ^(completed|failed)$ ]]; do
    ((SECONDS < deadline)) || { echo "state of $1 never became final: $(cat "$(state_file "$1")" 2>&1)" >&2; return 1; }
    sleep 0.02
  done
}

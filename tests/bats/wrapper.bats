#!/usr/bin/env bats
# The job wrapper against every scenario of issue 2 / FAILURE-MODES.md, with one shell per run
# (JOBKIT_TEST_SHELL). Real processes, real signals, real sqlite3, real tmux.
# shellcheck disable=SC2154 # $output and $stderr are set by bats' run
bats_require_minimum_version 1.5.0

setup() {
  load helpers
  setup_base
}

teardown() {
  # a failed assertion must not leave the test's tmpfs mounted
  ! mountpoint -q "$BASE/jobs" || umount "$BASE/jobs"
}

@test "exit 0 is recorded completed in the state file and the database" {
  add_row ok1
  run -0 wrapper ok1 sh -c 'echo hello'
  assert_output hello
  assert_final ok1 completed 0 null
  assert_equal "$(field ok1 forced_kill)" false
  [[ $(field ok1 started_at) =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$ ]]
  [[ $(field ok1 completed_at) =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$ ]]
  (($(field ok1 started_epoch) <= $(field ok1 completed_epoch)))
  assert_equal "$(field ok1 boot_id)" "$(cat /proc/sys/kernel/random/boot_id)"
  assert_equal "$(field ok1 pgid)" "$(field ok1 pid)"
  assert_equal "$(db_field ok1 started_at)" "$(field ok1 started_at)"
}

@test "exit N is recorded failed with that code and the wrapper exits N" {
  add_row n1
  run -3 wrapper n1 sh -c 'exit 3'
  assert_final n1 failed 3 null
  add_row n2
  run -255 wrapper n2 sh -c 'exit 255'
  assert_final n2 failed 255 null
}

@test "the job runs in the background in its own process group, stdin /dev/null, pid and start time recorded" {
  add_row pg1
  # the job lasts until the checks are done (a short job may be over, on a loaded machine,
  # before the wrapper would write `running`: then it writes the final state only)
  local go=$BATS_TEST_TMPDIR/go
  start_wrapper pg1 sh -c "n=0; while [ ! -e '$go' ] && [ \$n -lt 600 ]; do sleep 0.05; n=\$((n + 1)); done; "'read -r x; echo "stdin=$?"' >"$BATS_TEST_TMPDIR/out"
  local w=$WPID
  wait_status pg1 running || { touch "$go"; false; }
  local pid
  pid=$(job_pid pg1)
  local stat
  read -r -a stat <"/proc/$pid/stat"
  # fields after "(comm)": state ppid pgrp session ... starttime is field 22
  assert_equal "${stat[4]}" "$pid"   # process group = its own pid
  assert_equal "${stat[5]}" "$pid"   # session leader
  assert_equal "${stat[3]}" "$w"     # child of the wrapper
  assert_equal "$(field pg1 proc_start)" "${stat[21]}"
  touch "$go"
  wait "$w"
  assert_equal "$(cat "$BATS_TEST_TMPDIR/out")" "stdin=1"
}

# argv_prog DIR NAME: an executable NAME that records its arguments and its environment
argv_prog() {
  cat >"$1/$2" <<'SH'
#!/bin/sh
{ printf 'arg:%s\n' "$@"; printf 'env:%s\n' "${ARGV_MARK:-missing}"; } >"$ARGV_OUT"
SH
  chmod +x "$1/$2"
}

@test "the command's argv reaches exec untouched whatever its first word looks like" {
  local dir=$BATS_TEST_TMPDIR/progs name opt i=0 want
  mkdir -p "$dir"
  export ARGV_MARK=intact ARGV_OUT=$BATS_TEST_TMPDIR/argv.out
  want=$(printf 'arg:%s\n' 'a b' -x Y=2 ''; echo env:intact)
  # -m: with job control the shell may make the job's subshell a group leader already (mksh,
  # ksh93), which takes the wrapper's other exec path; posh has no -m
  local opts=("")
  "${TEST_SH[@]}" -m -c : </dev/null 2>/dev/null && opts+=(-m)
  for name in FOO=1 -i -- - --json; do
    argv_prog "$dir" "$name"
    for opt in "${opts[@]}"; do
      i=$((i + 1))
      add_row "argv-$i"
      rm -f "$ARGV_OUT"
      WRAPPER_SH_OPT=$opt WRAPPER_PATH=$dir:$PATH run -0 wrapper "argv-$i" "$name" 'a b' -x Y=2 ''
      assert_equal "$(cat "$ARGV_OUT" 2>&1)" "$want"
      assert_final "argv-$i" completed 0 null
    done
  done
  # no program of that name: not an assignment, a command that is not found
  for opt in "${opts[@]}"; do
    i=$((i + 1))
    add_row "argv-$i"
    WRAPPER_SH_OPT=$opt run -127 wrapper "argv-$i" FOO=1 touch "$BATS_TEST_TMPDIR/ran"
    assert_final "argv-$i" failed 127 null
  done
  [ ! -e "$BATS_TEST_TMPDIR/ran" ]
}

signal_test() { # SIGNAL NUMBER: the wrapper forwards it to the job's group and records it
  local sig=$1 num=$2 id=sig-$1
  add_row "$id"
  local got=$BATS_TEST_TMPDIR/got
  start_wrapper "$id" sh -c "trap 'echo $sig >$got; exit 0' $sig; sleep 30 & wait"
  local w=$WPID
  wait_status "$id" running
  sleep 0.2
  kill -s "$sig" "$w"
  local rc=0
  wait "$w" || rc=$?
  assert_equal "$rc" "$((128 + num))"
  assert_equal "$(cat "$got")" "$sig"
  assert_final "$id" failed "$((128 + num))" "$sig"
}

@test "SIGHUP to the wrapper is forwarded and recorded failed 129 HUP" { signal_test HUP 1; }
@test "SIGINT to the wrapper is forwarded and recorded failed 130 INT" { signal_test INT 2; }
@test "SIGQUIT to the wrapper is forwarded and recorded failed 131 QUIT" { signal_test QUIT 3; }
@test "SIGPIPE to the wrapper is forwarded and recorded failed 141 PIPE" { signal_test PIPE 13; }
@test "SIGTERM to the wrapper is forwarded and recorded failed 143 TERM" { signal_test TERM 15; }
@test "SIGUSR1 to the wrapper is forwarded and recorded failed 138 USR1" { signal_test USR1 10; }
@test "SIGUSR2 to the wrapper is forwarded and recorded failed 140 USR2" { signal_test USR2 12; }

@test "a job ignoring TERM is killed after the grace period (forced_kill)" {
  add_row ign1
  start_wrapper ign1 sh -c 'trap "" TERM; sleep 30'
  local w=$WPID
  wait_status ign1 running
  sleep 0.2
  local pid
  pid=$(job_pid ign1)
  local t0=$SECONDS rc=0
  kill -s TERM "$w"
  wait "$w" || rc=$?
  assert_equal "$rc" 143
  # grace 1 s: well under the job's 30 s and the default grace's 10 s (SECONDS counts whole
  # seconds; bats runs of several shells at once on 2 cores took more than 4)
  ((SECONDS - t0 <= 7)) || fail "the wrapper ended $((SECONDS - t0)) s after TERM (grace 1 s)"
  assert_final ign1 failed 143 TERM
  assert_equal "$(field ign1 forced_kill)" true
  group_gone "$pid"   # nothing of the job's group survives
}

@test "30 TERM-ignoring jobs cancelled at once: every one SIGKILLed after the grace, forced_kill true" {
  local n=30 i ready=$BATS_TEST_TMPDIR/ready pids=() bad=()
  mkdir -p "$ready"
  for i in $(seq 1 "$n"); do echo "INSERT INTO jobs (id) VALUES ('fk-$i');"; done | sql
  for i in $(seq 1 "$n"); do
    start_wrapper "fk-$i" sh -c "trap '' TERM; : >'$ready/$i'; sleep 30" >/dev/null 2>&1
    pids+=("$WPID")
  done
  local deadline=$((SECONDS + 30))
  until [ "$(find "$ready" -type f | wc -l)" -eq "$n" ]; do # every job ignores TERM now
    ((SECONDS < deadline)) || fail "only $(find "$ready" -type f | wc -l) of $n jobs started"
    sleep 0.05
  done
  kill -s TERM "${pids[@]}"
  for i in $(seq 1 "$n"); do wait_final "fk-$i" 20; done
  for i in $(seq 1 "$n"); do
    local rc=0
    wait "${pids[$((i - 1))]}" || rc=$?
    [ "$rc" = 143 ] && [ "$(field "fk-$i" forced_kill)" = true ] || bad+=("fk-$i:rc=$rc:$(cat "$(state_file "fk-$i")")")
  done
  ((${#bad[@]} == 0)) || fail "$(printf '%s\n' "${bad[@]}")"
  for i in $(seq 1 "$n"); do group_gone "$(job_pid "fk-$i")"; done
}

# fast_final_test COMM ARGV...: TERM to the wrapper kills the job (and its child COMM) at once;
# the final state lands within 1 s although the grace period is 10 s, every time
fast_final_test() {
  local comm=$1 k id pid t0 ms rc
  shift
  export JOBKIT_KILL_GRACE=10
  for k in 1 2 3 4 5 6; do
    id=ff-$k
    add_row "$id"
    start_wrapper "$id" "$@" >/dev/null 2>&1
    wait_status "$id" running
    pid=$(job_pid "$id")
    wait_group_has "$pid" "$comm" # the job runs its command, past the wrapper's launcher
    t0=$(now_ms)
    kill -s TERM "$WPID"
    wait_final "$id" 20
    ms=$(($(now_ms) - t0))
    rc=0
    wait "$WPID" || rc=$?
    assert_equal "$rc" 143
    assert_final "$id" failed 143 TERM
    assert_equal "$(field "$id" forced_kill)" false
    ((ms <= 1000)) || fail "try $k: the final state landed ${ms} ms after the signal (grace 10 s)"
    group_gone "$pid"
  done
}

@test "a job killed by a forwarded signal: final state within 1 s, not after the grace (sleep)" {
  fast_final_test sleep sleep 100
}

@test "a job killed by a forwarded signal: final state within 1 s, not after the grace (a child in the group)" {
  fast_final_test sleep sh -c 'sleep 100; :'
}

@test "a job killed by SIGKILL is recorded failed 137 KILL" {
  add_row k1
  start_wrapper k1 sleep 30
  local w=$WPID
  wait_status k1 running
  kill -s KILL "$(job_pid k1)"
  local rc=0
  wait "$w" || rc=$?
  assert_equal "$rc" 137
  assert_final k1 failed 137 KILL
}

tmux_test() { # kill-session|kill-server
  add_row "tm-$1"
  local sock=$BATS_TEST_TMPDIR/tmux.sock
  tmux -S "$sock" new-session -d -s "tm-$1" \
    "JOBKIT_BASE_DIR='$BASE' JOBKIT_KILL_GRACE=1 ${TEST_SH[*]} '$WRAPPER' 'tm-$1' sleep 30"
  wait_status "tm-$1" running
  sleep 0.2
  if [ "$1" = session ]; then
    tmux -S "$sock" kill-session -t "=tm-$1"
  else
    tmux -S "$sock" kill-server
  fi
  wait_status "tm-$1" failed 10
  assert_equal "$(field "tm-$1" status)" failed
  [[ $(field "tm-$1" signal) =~ ^(HUP|TERM)$ ]]
  wait_db() { # the final UPDATE follows the final state file
    local deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
      [ "$(db_field "tm-$1" status)" = failed ] && return 0
      sleep 0.05
    done
    return 1
  }
  wait_db "$1"
  group_gone "$(job_pid "tm-$1")"
}

@test "tmux kill-session records failed, never completed" { tmux_test session; }
@test "tmux kill-server records failed, never completed" { tmux_test server; }

@test "database held with BEGIN EXCLUSIVE for 3 s while the job ends: the row lands" {
  add_row lk3
  hold_db 3 &
  local holder=$!
  sleep 0.3
  run -0 wrapper lk3 true
  wait "$holder"
  assert_final lk3 completed 0 null
  # Both UPDATEs waited on the lock and raced when it was released: the row is final and whole.
  assert_equal "$(db_field lk3 pid)" "$(field lk3 pid)"
  assert_equal "$(db_field lk3 started_epoch)" "$(field lk3 started_epoch)"
}

@test "the running UPDATE never writes over a final row (it may commit after the final one)" {
  # The final UPDATE does not wait for the running one. Stand in for a final UPDATE that won the
  # race: the row is already final when the running UPDATE comes.
  sql "INSERT INTO jobs (id, status, exit_code) VALUES ('ro2', 'failed', 99)"
  local go=$BATS_TEST_TMPDIR/go
  start_wrapper ro2 sh -c "n=0; while [ ! -e '$go' ] && [ \$n -lt 600 ]; do sleep 0.05; n=\$((n + 1)); done" \
    2>"$BATS_TEST_TMPDIR/stderr"
  local w=$WPID
  wait_status ro2 running || { touch "$go"; false; }
  sleep 0.5 # the running UPDATE has long committed or been skipped
  assert_equal "$(db_field ro2 status),$(db_field ro2 exit_code),$(db_field ro2 started_at)" "failed,99,"
  touch "$go"
  wait "$w"
  # The final UPDATE carries the start fields, so the row is complete all the same.
  assert_final ro2 completed 0 null
  assert_equal "$(db_field ro2 pid)" "$(field ro2 pid)"
  assert_equal "$(db_field ro2 started_at)" "$(field ro2 started_at)"
  assert_equal "$(db_field ro2 boot_id)" "$(field ro2 boot_id)"
  [ ! -s "$BATS_TEST_TMPDIR/stderr" ] # no warning: a final row is not a missing row
}

@test "database locked longer than the timeout: state file final, db=locked, warning" {
  add_row lk9
  export JOBKIT_DB_TIMEOUT_MS=300 JOBKIT_DB_RETRIES=2
  hold_db 4 &
  local holder=$!
  sleep 0.3
  run -0 --separate-stderr wrapper lk9 true
  assert_equal "$(field lk9 status)" completed
  assert_equal "$(field lk9 db)" locked
  [[ $stderr == *"db=locked"* ]]
  grep -q 'db=locked' "$BASE/jobs/lk9.wrapper.log"
  wait "$holder"
  assert_equal "$(db_field lk9 status)" queued
}

@test "database missing: state file final, db=missing, no database created" {
  rm "$BASE/server.db"
  run -0 --separate-stderr wrapper dm1 true
  assert_equal "$(field dm1 status)" completed
  assert_equal "$(field dm1 db)" missing
  [[ $stderr == *"db=missing"* ]]
  [ ! -e "$BASE/server.db" ]
}

@test "database is garbage: db=corrupt" {
  rm "$BASE/server.db"*
  head -c 8192 /dev/urandom >"$BASE/server.db"
  run -4 --separate-stderr wrapper dg1 sh -c 'exit 4'
  assert_equal "$(field dg1 status)" failed
  assert_equal "$(field dg1 exit_code)" 4
  assert_equal "$(field dg1 db)" corrupt
  [[ $stderr == *"db=corrupt"* ]]
}

@test "database without the jobs table: db=wrong_schema" {
  rm "$BASE/server.db"*
  sql "CREATE TABLE other (x)"
  run -0 --separate-stderr wrapper ds1 true
  assert_equal "$(field ds1 db)" wrong_schema
  [[ $stderr == *"db=wrong_schema"* ]]
}

@test "database without the job's row: db=no_row, no row created" {
  run -0 --separate-stderr wrapper nr1 true
  assert_equal "$(field nr1 status)" completed
  assert_equal "$(field nr1 db)" no_row
  [[ $stderr == *"db=no_row"* ]]
  assert_equal "$(sql 'SELECT count(*) FROM jobs')" 0
}

@test "sqlite3 not on PATH: db=no_sqlite3, state file final" {
  add_row nq1
  WRAPPER_PATH=$(path_without sqlite3) run -0 --separate-stderr wrapper nq1 true
  assert_equal "$(field nq1 status)" completed
  assert_equal "$(field nq1 db)" no_sqlite3
  [[ $stderr == *"db=no_sqlite3"* ]]
}

@test "no flock on PATH: nothing changes" {
  add_row nf1
  WRAPPER_PATH=$(path_without flock) run -0 wrapper nf1 true
  assert_final nf1 completed 0 null
}

@test "a date without -I: timestamps still recorded" {
  add_row nd1
  local dir
  dir=$(path_without date)
  local real_date
  real_date=$(type -P date)
  # shellcheck disable=SC2016 # a script for the shim, expanded when it runs
  printf '#!/bin/sh\nfor a in "$@"; do case $a in -I*|--iso*) echo "date: invalid option" >&2; exit 1;; esac; done\nexec %s "$@"\n' "$real_date" >"$dir/date"
  chmod +x "$dir/date"
  WRAPPER_PATH=$dir run -0 wrapper nd1 true
  assert_final nd1 completed 0 null
  [[ $(field nd1 completed_at) =~ Z$ ]]
}

@test "state directory not writable: exit 73, job not run" {
  mkdir -p "$BASE/jobs"
  mount -t tmpfs -o ro,size=1m tmpfs "$BASE/jobs"
  add_row ro1
  run -73 --separate-stderr wrapper ro1 touch "$BATS_TEST_TMPDIR/ran"
  umount "$BASE/jobs"
  [ ! -e "$BATS_TEST_TMPDIR/ran" ]
  [[ $stderr == *"cannot write"* ]]
  assert_equal "$(db_field ro1 status)" failed
  assert_equal "$(db_field ro1 exit_code)" 73
}

@test "full disk, blocks only (inodes free) at start: exit 73, job not run, row failed/73" {
  mkdir -p "$BASE/jobs"
  mount -t tmpfs -o size=64k tmpfs "$BASE/jobs"
  (cat /dev/zero >"$BASE/jobs/.fill") 2>/dev/null || true # a file can be created, not written
  add_row bf1
  run -73 --separate-stderr wrapper bf1 touch "$BATS_TEST_TMPDIR/ran"
  umount "$BASE/jobs"
  [ ! -e "$BATS_TEST_TMPDIR/ran" ]
  [[ $stderr == *"cannot write"* ]]
  assert_equal "$(db_field bf1 status),$(db_field bf1 exit_code)" failed,73
}

@test "full disk: a failed state write is reported and never leaves a broken file" {
  mkdir -p "$BASE/jobs"
  mount -t tmpfs -o size=64k,nr_inodes=64 tmpfs "$BASE/jobs"
  add_row fd1
  # Once the running state is written (up to 10 s on a loaded machine), the job fills the blocks
  # and then the inodes (tmpfs may free a page later; no inode comes back).
  run -0 --separate-stderr wrapper fd1 sh -c "cd '$BASE/jobs'; n=0; while [ ! -e fd1.status ] && [ \$n -lt 200 ]; do sleep 0.05; n=\$((n + 1)); done; cat /dev/zero >filler 2>/dev/null; i=0; while true >fill\$i; do i=\$((i + 1)); done 2>/dev/null; exit 0"
  local st
  st=$(field fd1 status) || { umount "$BASE/jobs"; false; }
  # The first final write needs new inodes and fails: reported, the running state kept, and the
  # rewrite with the database outcome needs one too. Were an inode freed meanwhile, the final
  # state would land after all. Either way the file is one valid JSON document, the previous
  # state or the final one, never a broken one.
  [[ $stderr == *"state file write failed (status=completed)"* ]]
  [[ $st == running || $st == completed ]]
  [ "$(grep -c . "$(state_file fd1)")" = 1 ]
  assert_equal "$(db_field fd1 status)" completed   # the database was not on the full disk
  umount "$BASE/jobs"
}

@test "state directory on a network filesystem type is refused with exit 66" {
  mkdir -p "$BASE/jobs"
  mount -t tmpfs -o size=1m tmpfs "$BASE/jobs"
  add_row nfs1
  JOBKIT_NETFS_TYPES="nfs tmpfs" run -66 --separate-stderr wrapper nfs1 true
  umount "$BASE/jobs"
  [[ $stderr == *"network filesystem"* ]]
}

@test "a job id already used is refused with exit 67 and the first record kept" {
  add_row dup1
  run -0 wrapper dup1 true
  local before
  before=$(cat "$(state_file dup1)")
  run -67 wrapper dup1 sh -c 'exit 9'
  assert_equal "$(cat "$(state_file dup1)")" "$before"
}

@test "100 jobs finishing at once on one database: 100/100 rows and files final" {
  local i
  for i in $(seq 1 100); do echo "INSERT INTO jobs (id) VALUES ('many-$i');"; done | sql
  local go=$BATS_TEST_TMPDIR/go pids=()
  for i in $(seq 1 100); do
    wrapper "many-$i" sh -c "while [ ! -e '$go' ]; do sleep 0.05; done; exit $((i % 3))" >/dev/null 2>&1 &
    pids+=($!)
  done
  local deadline=$((SECONDS + 60))
  count_status() { local f n=0; for f in "$BASE"/jobs/*.status; do [ -e "$f" ] && n=$((n + 1)); done; echo "$n"; }
  while (($(count_status) < 100)) && ((SECONDS < deadline)); do sleep 0.1; done
  touch "$go"
  for i in "${pids[@]}"; do wait "$i" || true; done
  assert_equal "$(sql "SELECT count(*) FROM jobs WHERE status IN ('completed', 'failed')")" 100
  assert_equal "$(sql "SELECT count(*) FROM jobs WHERE exit_code = CAST(substr(id, 6) AS INTEGER) % 3")" 100
  local final=0
  for i in $(seq 1 100); do
    [ "$(field "many-$i" exit_code)" = $((i % 3)) ] && [ "$(field "many-$i" db)" = ok ] && final=$((final + 1))
  done
  assert_equal "$final" 100
}

@test "the job inherits no descriptor under the base directory (no lock or log fd)" {
  add_row fdl1
  run -0 wrapper fdl1 sh -c 'ls -l /proc/$$/fd'
  refute_output --partial "$BASE"
}

@test "job ids: invalid and hostile ids exit 65 and touch nothing" {
  # shellcheck disable=SC2016 # literally $(...): must never be expanded by the wrapper
  local ids=("x'; DROP TABLE jobs; --" 'a"b' '../x' '$(touch /tmp/pwned)' '' \
    "$(printf 'a%.0s' $(seq 1 65))" "$(printf 'a\nb')" 'a b' 'é' 'x/y' '.hidden' 'a*')
  rm -f /tmp/pwned
  local before
  before=$(sql .dump)
  local id
  for id in "${ids[@]}"; do
    run -65 wrapper "$id" touch "$BATS_TEST_TMPDIR/ran"
  done
  [ ! -e "$BATS_TEST_TMPDIR/ran" ]
  [ ! -e /tmp/pwned ]
  [ ! -e "$BASE/jobs" ]
  assert_equal "$(sql .dump)" "$before"
  # the longest valid id is accepted
  local long
  long=$(printf 'b%.0s' $(seq 1 64))
  add_row "$long"
  run -0 wrapper "$long" true
  assert_final "$long" completed 0 null
}

@test "usage errors and bad settings exit 64 before anything runs" {
  run -64 wrapper
  run -64 wrapper only-id
  JOBKIT_KILL_GRACE=soon run -64 wrapper u1 true
  JOBKIT_DB_TIMEOUT_MS=-1 run -64 wrapper u2 true
  [ ! -e "$BASE/jobs" ]
}

@test "every JSON string is escaped: hostile user and host names round-trip" {
  add_row esc1
  local weird=$'a"b\\c\td\001e\u00e9/\'$(x)'
  USER=$weird run -0 wrapper esc1 true
  assert_equal "$(jq -r .user "$(state_file esc1)")" "$weird"
  assert_equal "$(db_field esc1 user)" "$weird"
}

@test "state file matches the published JSON Schema" {
  add_row sch1
  run -0 wrapper sch1 true
  "$ROOT/.venv/bin/python" - "$ROOT/wrapper/state.schema.json" "$(state_file sch1)" <<'PY'
import json, sys
import jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
jsonschema.validate(json.load(open(sys.argv[2])), schema)
PY
}

@test "a job over before its running state is written: the final record still has its start and end" {
  # `true` is usually over by the time the wrapper would write `running` (then it writes only
  # the final state, one clock reading for both times); either way the record is complete
  local k id
  for k in 1 2 3 4 5 6 7 8; do
    id=over-$k
    add_row "$id"
    run -0 wrapper "$id" true
    assert_final "$id" completed 0 null
    local f
    f=$(state_file "$id")
    # (proc_start may be null: a job reaped before the wrapper read it has no start time left)
    jq -e '.started_at != null and .completed_at != null and .started_epoch <= .completed_epoch
           and .pid != null' "$f" >/dev/null || fail "incomplete: $(cat "$f")"
    assert_equal "$(db_field "$id" started_at)" "$(jq -r .started_at "$f")"
    assert_equal "$(db_field "$id" completed_epoch)" "$(jq -r .completed_epoch "$f")"
  done
}

@test "no temporary file is left in the state directory, whatever the database answered" {
  add_row tf1
  run -0 wrapper tf1 true                              # ok: the prepared rewrite renamed in
  assert_final tf1 completed 0 null
  run -4 wrapper tf2 sh -c 'exit 4'                    # no row: written anew
  assert_equal "$(field tf2 db)" no_row
  add_row tf3
  run -143 wrapper tf3 sh -c 'kill -s TERM $$'         # a signal, ok
  assert_final tf3 failed 143 TERM
  JOBKIT_DB=none run -0 wrapper tf4 true               # no database: `none` is the expected answer
  assert_equal "$(field tf4 db)" none
  mv "$BASE/server.db" "$BASE/gone.db"
  run -0 wrapper tf5 true                              # missing: written anew
  assert_equal "$(field tf5 db)" missing
  local left
  left=$(find "$BASE/jobs" -name '*.tmp')
  assert_equal "$left" ""
}

@test "crash points: killing the wrapper at any write leaves the previous or the next valid JSON" {
  # mv/sync/sqlite3/date shims SIGKILL the wrapper at their k-th call, for every k, either
  # before the command runs (crash before the write) or after it (crash right after it). The
  # job lasts a moment: a job already over when the wrapper would write `running` skips it.
  local dir k mode seen=""
  dir=$(path_without mv sync sqlite3 date)
  local t real
  for t in mv sync sqlite3 date; do
    real=$(type -P "$t")
    cat >"$dir/$t" <<SH
#!/bin/sh
n=1; while ! mkdir "\$CRASH_COUNTER.\$n" 2>/dev/null; do n=\$((n + 1)); done # atomic sequence number
if [ "\$n" != "\$CRASH_AT" ]; then exec $real "\$@"; fi
if [ "\$CRASH_MODE" = before ]; then kill -s KILL "\$CRASH_WRAPPER_PID"; exit 1; fi
$real "\$@"; rc=\$?
kill -s KILL "\$CRASH_WRAPPER_PID"
exit "\$rc"
SH
    chmod +x "$dir/$t"
  done
  for mode in before after; do
    for k in $(seq 1 40); do
      local id=crash-$mode-$k
      add_row "$id"
      export CRASH_COUNTER=$BATS_TEST_TMPDIR/counter-$mode-$k CRASH_AT=$k CRASH_MODE=$mode
      PATH=$dir "${TEST_SH[@]}" -c 'CRASH_WRAPPER_PID=$$; export CRASH_WRAPPER_PID; exec "$@"' sh \
        "${TEST_SH[@]}" "$WRAPPER" "$id" sleep 0.2 >/dev/null 2>&1 || true
      sleep 0.05   # let a detached background UPDATE finish
      local f
      f=$(state_file "$id")
      if [ -e "$f" ]; then
        jq -e . "$f" >/dev/null || fail "$mode k=$k: state file is not one valid JSON document: $(cat "$f")"
        seen="$seen $(jq -r '.status + "/" + .db' "$f")"
      else
        seen="$seen none"
      fi
      [ -d "$CRASH_COUNTER.$k" ] || break   # no k-th external call: the run completed
    done
    [ "$k" -lt 40 ] || fail "the wrapper made more than 40 external calls"
  done
  echo "# states after each crash point:$seen" >&3
  [[ $seen == *none* && $seen == *running/pending* && $seen == *completed/pending* && $seen == *completed/ok* ]]
}

# --- job output kept on the host (JOBKIT_OUTPUT=files) ----------------------------------------
out_file() { printf '%s/jobs/%s.out' "$BASE" "$1"; }
err_file() { printf '%s/jobs/%s.err' "$BASE" "$1"; }

@test "JOBKIT_OUTPUT=files: the job's stdout and stderr are kept in <id>.out and <id>.err, byte for byte" {
  add_row out1
  # no trailing newline, a NUL byte, a line of 100000 bytes, interleaved streams
  JOBKIT_OUTPUT=files run -3 --separate-stderr wrapper out1 sh -c \
    'printf "one\n"; printf "e1\n" >&2; printf "a\000b"; head -c 100000 /dev/zero | tr "\000" x; printf "\nlast"; printf "e2" >&2; exit 3'
  assert_equal "$output" ""   # nothing reaches the wrapper's own stdout (the tmux pane)
  assert_equal "$stderr" ""
  assert_final out1 failed 3 null
  local want=$BATS_TEST_TMPDIR/want
  { printf 'one\na\000b'; head -c 100000 /dev/zero | tr '\000' x; printf '\nlast'; } >"$want"
  cmp "$want" "$(out_file out1)"
  assert_equal "$(cat "$(err_file out1)")" "$(printf 'e1\ne2')"
  # beside the state file, and not dotfiles (readers skip those)
  assert_equal "$(dirname "$(out_file out1)")" "$(dirname "$(state_file out1)")"
}

@test "JOBKIT_OUTPUT=files: a job that prints nothing still gets both files, empty" {
  add_row out2
  JOBKIT_OUTPUT=files run -0 wrapper out2 true
  assert_output ""
  [ -f "$(out_file out2)" ]
  [ ! -s "$(out_file out2)" ]
  [ -f "$(err_file out2)" ]
  [ ! -s "$(err_file out2)" ]
  assert_final out2 completed 0 null
}

@test "JOBKIT_OUTPUT=files: the output is in the file while the job runs (never held back)" {
  add_row out3
  local go=$BATS_TEST_TMPDIR/go
  JOBKIT_OUTPUT=files start_wrapper out3 sh -c "echo started; echo warming >&2; while [ ! -e '$go' ]; do sleep 0.05; done; echo done" >/dev/null 2>&1
  local w=$WPID deadline=$((SECONDS + 10))
  until [ "$(cat "$(out_file out3)" 2>/dev/null)" = started ] && [ "$(cat "$(err_file out3)" 2>/dev/null)" = warming ]; do
    ((SECONDS < deadline)) || { touch "$go"; fail "output not in the files while the job runs: $(cat "$(out_file out3)" 2>&1)"; }
    sleep 0.05
  done
  assert_equal "$(field out3 status)" running
  touch "$go"
  wait "$w"
  assert_equal "$(cat "$(out_file out3)")" "$(printf 'started\ndone')"
}

@test "JOBKIT_OUTPUT=files: a reused or fenced id never touches the first job's output" {
  add_row dupo
  JOBKIT_OUTPUT=files run -0 wrapper dupo sh -c 'echo first; echo first-err >&2'
  JOBKIT_OUTPUT=files run -67 wrapper dupo sh -c 'echo second; echo second-err >&2'
  assert_equal "$(cat "$(out_file dupo)")" first
  assert_equal "$(cat "$(err_file dupo)")" first-err
  # an id fenced by the client (claimed, never started): no output file appears
  mkdir -p "$BASE/jobs"
  printf 'jobkit-fence 1: never started\n' >"$BASE/jobs/fenced1.wrapper.log"
  add_row fenced1
  JOBKIT_OUTPUT=files run -67 wrapper fenced1 sh -c 'echo ran'
  [ ! -e "$(out_file fenced1)" ]
  [ ! -e "$(err_file fenced1)" ]
  # output files left by something else: the id counts as used, they are kept as they are
  printf 'old\n' >"$BASE/jobs/stray.out"
  add_row stray
  JOBKIT_OUTPUT=files run -67 wrapper stray sh -c 'echo new'
  assert_equal "$(cat "$BASE/jobs/stray.out")" old
  [ ! -e "$BASE/jobs/stray.wrapper.log" ]
}

@test "JOBKIT_OUTPUT=files: no inode left for the output after the claim: exit 73, job not run, row failed/73" {
  mkdir -p "$BASE/jobs"
  # the directory and the claim take the only two inodes: the claim succeeds, the output cannot be created
  mount -t tmpfs -o size=1m,nr_inodes=2 tmpfs "$BASE/jobs"
  add_row noino
  JOBKIT_OUTPUT=files run -73 --separate-stderr wrapper noino touch "$BATS_TEST_TMPDIR/ran"
  local claim
  claim=$(cat "$BASE/jobs/noino.wrapper.log")
  umount "$BASE/jobs"
  [ ! -e "$BATS_TEST_TMPDIR/ran" ]
  [[ $stderr == *"cannot write"* ]]
  [[ $claim == *"noino: claimed"* ]]
  assert_equal "$(db_field noino status),$(db_field noino exit_code)" failed,73
}

@test "JOBKIT_OUTPUT=files: the job's only descriptors under the base directory are its stdout and stderr" {
  add_row fdo1
  # shellcheck disable=SC2016 # expanded by the job's shell
  JOBKIT_OUTPUT=files run -0 wrapper fdo1 sh -c 'for f in /proc/$$/fd/*; do printf "%s %s\n" "${f##*/}" "$(readlink "$f")"; done'
  run -0 grep -F "$BASE" "$(out_file fdo1)"
  assert_output "$(printf '1 %s\n2 %s' "$(out_file fdo1)" "$(err_file fdo1)")"
}

@test "JOBKIT_OUTPUT: without it nothing is kept and the output is the wrapper's; a bad value is exit 64" {
  add_row noout
  run -0 --separate-stderr wrapper noout sh -c 'echo visible; echo visible-err >&2'
  assert_output visible
  assert_equal "$stderr" visible-err
  [ ! -e "$(out_file noout)" ]
  [ ! -e "$(err_file noout)" ]
  JOBKIT_OUTPUT=yes run -64 --separate-stderr wrapper bad1 true
  [[ $stderr == *JOBKIT_OUTPUT* ]]
  [ ! -e "$BASE/jobs/bad1.wrapper.log" ]
}

# --- no database (JOBKIT_DB=none: a batch scheduler's shared filesystem) -----------------------
@test "JOBKIT_DB=none: no server.db needed or touched; the state file is the record (db: none)" {
  rm -f "$BASE/server.db"
  JOBKIT_DB=none JOBKIT_OUTPUT=files run -4 --separate-stderr wrapper nodb1 sh -c 'echo hi; exit 4'
  assert_equal "$stderr" ""
  assert_equal "$(field nodb1 status)" failed
  assert_equal "$(field nodb1 exit_code)" 4
  assert_equal "$(field nodb1 db)" none
  assert_equal "$(cat "$BASE/jobs/nodb1.out")" hi
  [ ! -e "$BASE/server.db" ]
  JOBKIT_DB=none run -0 wrapper nodb2 true
  assert_equal "$(field nodb2 status)" completed
  assert_equal "$(field nodb2 db)" none
  JOBKIT_DB=none run -67 wrapper nodb2 true   # a used id is still refused
}

@test "JOBKIT_DB=none: a signal is recorded in the state file as with a database" {
  JOBKIT_DB=none start_wrapper nodb3 sleep 30 >/dev/null 2>&1
  local w=$WPID
  wait_status nodb3 running
  kill -TERM "$w"
  wait "$w" || true
  assert_equal "$(field nodb3 status)" failed
  assert_equal "$(field nodb3 signal)" TERM
  assert_equal "$(field nodb3 db)" none
}

@test "JOBKIT_DB=none: a network filesystem is allowed (nothing but the state file is written)" {
  mkdir -p "$BASE/jobs"
  mount -t tmpfs -o size=1m tmpfs "$BASE/jobs"
  JOBKIT_DB=none JOBKIT_NETFS_TYPES="nfs tmpfs" run -0 --separate-stderr wrapper nfsok true
  local st; st=$(field nfsok status)
  umount "$BASE/jobs"
  assert_equal "$st" completed
}

@test "JOBKIT_DB: any other value is refused with exit 64" {
  JOBKIT_DB=mysql run -64 --separate-stderr wrapper nodb4 true
  [[ $stderr == *JOBKIT_DB* ]]
}

@test "the running state's process group exists the moment the state says running" {
  local i pg missing=0
  for i in $(seq 1 15); do
    add_row "pg$i"
    # the job outlives the check (a job over before it would be checked says nothing: a loaded
    # machine can take longer than a short job to let the check see `running`); TERM ends it
    start_wrapper "pg$i" sleep 30 >/dev/null 2>&1
    local deadline=$((SECONDS + 10))
    until [ "$(jq -r .status "$(state_file "pg$i")" 2>/dev/null)" = running ]; do
      ((SECONDS < deadline)) || fail "pg$i never said running"
    done
    pg=$(field "pg$i" pgid)
    kill -0 -- "-$pg" 2>/dev/null || missing=$((missing + 1))
    kill -s TERM "$WPID"
  done
  wait
  assert_equal "$missing" 0
}

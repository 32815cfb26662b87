# jobkit probe: every piece of evidence for many jobs in one round trip. POSIX sh + awk (BusyBox
# too). A fixed handful of processes whatever the number of jobs: sh, sqlite3, one awk for
# everything else (boot id, clock, state files, claim logs, /proc, sections), tmux only if its
# socket exists; the rare jobs to fence take one more sh.
# Usage: sh -c "$(cat probe.sh)" probe BASE_DIR [QUERIES SQL]
#   - with QUERIES and SQL (the client's, when they fit in the command line): QUERIES are lines
#     "Q ID PID|- PROC_START|- F|-", SQL the query of the server database for those ids;
#   - without: stdin holds lines "ID [PID [PROC_START [F]]]" and one more awk turns them into both
#     (sqlite3 then reads the SQL on stdin: no argument-size limit, whatever the number of jobs).
# (F: fence the job if nothing of it is on the host: claim its id so that it can never start)
# Output sections: ==boot, ==now, ==db (sqlite3 -json rows), ==files (E id / F<TAB>id<TAB>line /
# L<TAB>id<TAB>first line of the claim log), ==procs (S pid starttime state; a zombie is dead),
# ==tmux (T name, rc=N), ==fence (X id: fenced now), ==all (A id: every state file), ==end.
# Order of observation: tmux sessions, database, state files and claims, /proc, fences.
base=$1
# mawk where there is one: it starts in 1 ms where gawk takes 5 (Debian installs gawk as awk
# beside mawk); every awk here is POSIX awk, BusyBox's included.
awk=awk
if command -v mawk >/dev/null 2>&1; then awk=mawk; fi
inline=${3+yes}
queries=${2-}
sql=${3-}
jobs=$base/jobs
db=$base/server.db
sessions=''
tmuxrc=none
if command -v tmux >/dev/null 2>&1; then
  if [ -S "$base/tmux.sock" ]; then
    sessions=$(tmux -S "$base/tmux.sock" list-sessions -F '#{session_name}' 2>/dev/null)
    tmuxrc=$?
  else
    tmuxrc=1  # what tmux answers itself: no server on a socket that does not exist
  fi
fi
dbstate=ok
# No checkpoint on close (sqlite3 >= 3.26; -json needs 3.33): a reader would otherwise fsync the
# WAL the wrappers left into the database on its way out. `.dbconfig` prints the setting: the
# last awk drops that line.
nockpt='.dbconfig no_ckpt_on_close on'
if ! command -v sqlite3 >/dev/null 2>&1; then
  dbstate=no_sqlite3
elif [ ! -f "$db" ]; then
  dbstate=missing
fi
set -- "$jobs"/*.status
[ $# -ne 1 ] || [ -e "$1" ] || shift
{
  [ $# -eq 0 ] || printf 'A %s\n' "$@"
  echo '==sql'
  # SELECT *: a schema with fewer (or more) columns than jobkit's still answers.
  if [ "$inline" = yes ]; then
    [ -z "$queries" ] || printf '%s\n' "$queries"
    if [ "$dbstate" = ok ]; then
      sqlite3 -json -bail -init /dev/null -cmd '.timeout 1500' -cmd "$nockpt" "$db" "$sql" 2>&1
      echo "==dbrc rc=$?"
    else
      echo "==dbrc $dbstate"
    fi
  else
    # The queries reach the last awk on fd 3 (as whole lines, all of them before any SQL is
    # written), so a sqlite3 that fails to start or dies takes none of them with it.
    "$awk" -v dbstate="$dbstate" 'BEGIN { q = sprintf("%c", 39); n = 0 }
      $1 ~ /^[A-Za-z0-9_-]+$/ && length($1) <= 64 && !seen[$1]++ {
        line = "Q " $1 " " ($2 ~ /^[0-9]+$/ ? $2 : "-") " " ($3 ~ /^[0-9]+$/ ? $3 : "-") " " ($4 == "F" ? "F" : "-") "\n"
        if (length(chunk) + length(line) > 3500) { printf "%s", chunk > "/dev/stderr"; fflush("/dev/stderr"); chunk = "" }
        chunk = chunk line
        ids[++n] = $1 }
      END {
        if (chunk != "") { printf "%s", chunk > "/dev/stderr"; fflush("/dev/stderr") }
        if (dbstate != "ok") exit
        printf "SELECT * FROM jobs WHERE id IN ("
        for (i = 1; i <= n; i++) printf "%s%s%s%s", (i > 1 ? "," : ""), q, ids[i], q
        print ");" }' 2>&3 |
      if [ "$dbstate" = ok ]; then
        sqlite3 -json -bail -init /dev/null -cmd '.timeout 1500' -cmd "$nockpt" "$db" 2>&1
        echo "==dbrc rc=$?"
      else
        echo "==dbrc $dbstate"
      fi
  fi
} 3>&1 | S=$sessions T=$tmuxrc J=$jobs "$awk" 'BEGIN {
    boot = ""; f = "/proc/sys/kernel/random/boot_id"
    if ((getline boot < f) <= 0) boot = ""
    close(f)
    printf "==boot %s\n", boot
    # The clock without a process: srand() returns the previous seed, which POSIX awks set to
    # the time of day in seconds; taken only when the boot time plus the uptime agree with it
    # (a recent mawk seeds with nanoseconds, another awk could seed otherwise): else date.
    srand(); now = srand(); up = ""; bt = ""
    f = "/proc/uptime"; if ((getline line < f) > 0) { split(line, a, " "); up = a[1] }
    close(f)
    f = "/proc/stat"; while ((getline line < f) > 0) if (line ~ /^btime [0-9]+$/) { bt = substr(line, 7); break }
    close(f)
    if (!(now ~ /^[0-9]+$/ && up ~ /^[0-9]+(\.[0-9]*)?$/ && bt != "" && now - (bt + up) < 3 && bt + up - now < 3)) {
      now = ""; c = "date +%s 2>/dev/null"; if ((c | getline line) > 0 && line ~ /^[0-9]+$/) now = line
      close(c)
    }
    nq = 0; nd = 0; na = 0; sql = 0 }
  !sql { if ($0 == "==sql") sql = 1; else if (/^A /) all[++na] = $0; next }
  /^Q / { if (!(($2) in qpid)) { qid[++nq] = $2; qpid[$2] = $3; qf[$2] = $5 }; next }
  /^==dbrc / { dbh = substr($0, 8); next }
  /^ *no_ckpt_on_close o[nf]+$/ { next }
  { dbl[++nd] = $0 }
  END {
    print "==now " now
    print "==db " dbh
    for (i = 1; i <= nd; i++) {
      print dbl[i]
      if (match(dbl[i], /"pid":[0-9]+/)) pids[++np] = substr(dbl[i], RSTART + 6, RLENGTH - 6)
    }
    print "==files"
    dir = ENVIRON["J"]
    for (k = 1; k <= nq; k++) {
      id = qid[k]; if (qpid[id] != "-") pids[++np] = qpid[id]
      f = dir "/" id ".status"; seen = 0
      while ((getline line < f) > 0) {
        if (!seen++) print "E " id
        printf "F\t%s\t%s\n", id, line
        s = line
        while (match(s, /"(wrapper_)?pid"[ ]*:[ ]*[0-9]+/)) { v = substr(s, RSTART, RLENGTH); sub(/.*:[ ]*/, "", v); pids[++np] = v; s = substr(s, RSTART + RLENGTH) }
      }
      close(f)
      g = dir "/" id ".wrapper.log"; r = (getline line < g)
      if (r > 0) { printf "L\t%s\t%s\n", id, line; if (match(line, /^jobkit-wrapper\[[0-9]+\]/)) pids[++np] = substr(line, 16, RLENGTH - 16) }
      else if (r == 0) printf "L\t%s\t\n", id
      close(g)
      if (!seen && r < 0 && qf[id] == "F") fence[++nf] = id
    }
    print "==procs"
    for (k = 1; k <= np; k++) {
      p = pids[k]
      if (p !~ /^[0-9]+$/ || done[p]++) continue
      f = "/proc/" p "/stat"
      if ((getline line < f) > 0) { s = line; sub(/.*\) /, "", s); split(s, a, " "); print "S " p " " a[20] " " a[1] }
      close(f)
    }
    print "==tmux"
    ns = split(ENVIRON["S"], sess, "\n")
    for (k = 1; k <= ns; k++) { print "T " sess[k]; live["T " sess[k]] = 1 }
    print "rc=" ENVIRON["T"]
    print "==fence"
    # A job to fence has no state file, no claim log and no session: claim its id (O_EXCL, as
    # the wrapper does) so that a launch still in flight can never start it: "never started" is
    # then a fact, not a guess. A wrapper that claimed first wins, and the job is not fenced.
    cmd = ""
    for (k = 1; k <= nf; k++) if (!(("T " fence[k]) in live))
      cmd = cmd " " fence[k]
    if (cmd != "") {
      fflush()
      system("for id in" cmd "; do if (set -C; printf \"jobkit-fence %s: never started\\n\" " now " >\"$J/$id.wrapper.log\") 2>/dev/null; then echo \"X $id\"; fi; done")
    }
    print "==all"
    for (k = 1; k <= na; k++) { a1 = substr(all[k], 3); sub(/.*\//, "", a1); sub(/\.status$/, "", a1); print "A " a1 }
    print "==end" }'

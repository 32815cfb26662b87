# The probe as it was before the single-awk rewrite (jobkit/data/probe.sh): kept as the reference
# that tests/unit/test_probe.py compares the current probe with, on generated hosts.
# jobkit probe: every piece of evidence for many jobs in one round trip. POSIX sh + awk (BusyBox
# too); a handful of processes whatever the number of jobs, no per-job shell loop (except the
# rare jobs to fence).
# Usage: sh -c "$(cat probe.sh)" probe BASE_DIR   with stdin: lines "ID [PID [PROC_START [F]]]"
# (F: fence the job if nothing of it is on the host: claim its id so that it can never start)
# Output sections: ==boot, ==now, ==db (sqlite3 -json rows), ==files (E id / F<TAB>path<TAB>line /
# L<TAB>id<TAB>first line of the claim log / P pid), ==procs (S pid starttime state; a zombie is
# dead), ==tmux (T name, rc=N), ==fence (X id: fenced now), ==all (A id: every state file), ==end.
base=$1
jobs=$base/jobs
db=$base/server.db
# ids and pids the client asked about; anything not a valid id is dropped here
input=$(awk '$1 ~ /^[A-Za-z0-9_-]+$/ && length($1) <= 64 {
  print $1, ($2 ~ /^[0-9]+$/ ? $2 : "-"), ($3 ~ /^[0-9]+$/ ? $3 : "-"), ($4 == "F" ? "F" : "-") }')
boot=''
{ read -r boot </proc/sys/kernel/random/boot_id; } 2>/dev/null
now=$(date +%s)
printf '==boot %s\n==now %s\n' "$boot" "$now"
dbpids=''
if ! command -v sqlite3 >/dev/null 2>&1; then
  echo '==db no_sqlite3'
elif [ ! -f "$db" ]; then
  echo '==db missing'
else
  # SELECT *: a schema with fewer (or more) columns than jobkit's still answers
  sql=$(printf '%s\n' "$input" | awk 'BEGIN { ORS = ""; q = sprintf("%c", 39)
      print "SELECT * FROM jobs WHERE id IN (" }
    NF { if (n++) print ","; print q $1 q } END { print ");" }')
  out=$(sqlite3 -json -bail -cmd '.timeout 1500' "$db" "$sql" 2>&1)
  printf '==db rc=%s\n%s\n' "$?" "$out"
  dbpids=$(printf '%s\n' "$out" | sed -n 's/.*"pid":\([0-9][0-9]*\).*/\1/p')
fi
echo '==files'
files=$(printf '%s\n' "$input" | awk -v dir="$jobs" 'NF {
    f = dir "/" $1 ".status"; seen = 0
    while ((getline line < f) > 0) {
      if (!seen++) print "E " $1
      printf "F\t%s\t%s\n", f, line
      s = line
      while (match(s, /"(wrapper_)?pid"[ ]*:[ ]*[0-9]+/)) { v = substr(s, RSTART, RLENGTH); sub(/.*:[ ]*/, "", v); print "P " v; s = substr(s, RSTART + RLENGTH) }
    }
    close(f)
    g = dir "/" $1 ".wrapper.log"; r = (getline line < g)
    if (r > 0) { printf "L\t%s\t%s\n", $1, line; if (match(line, /^jobkit-wrapper\[[0-9]+\]/)) { v = substr(line, 16, RLENGTH - 16); print "P " v } }
    else if (r == 0) printf "L\t%s\t\n", $1
    close(g)
    if (!seen && r < 0 && $4 == "F") print "N " $1 }')
printf '%s\n' "$files"
echo '==procs'
{ printf '%s\n' "$input" | awk '$2 != "-" { print $2 }'; printf '%s\n' "$dbpids"; printf '%s\n' "$files" | sed -n 's/^P //p'; } |
  awk '/^[0-9]+$/ && !seen[$1]++ {
    f = "/proc/" $1 "/stat"
    if ((getline line < f) > 0) { s = line; sub(/.*\) /, "", s); split(s, a, " "); print "S " $1 " " a[20] " " a[1] }
    close(f) }'
echo '==tmux'
sessions=''
if command -v tmux >/dev/null 2>&1; then
  sessions=$(tmux -S "$base/tmux.sock" list-sessions -F 'T #{session_name}' 2>/dev/null)
  rc=$?
  [ -z "$sessions" ] || printf '%s\n' "$sessions"
  echo "rc=$rc"
else
  echo 'rc=none'
fi
echo '==fence'
# A job to fence has no state file, no claim log and no session: claim its id (O_EXCL, as the
# wrapper does) so that a launch still in flight can never start it: "never started" is then a
# fact, not a guess. A wrapper that claimed first wins, and the job is not fenced.
nl='
'
for id in $(printf '%s\n' "$files" | sed -n 's/^N //p'); do
  case "$nl$sessions$nl" in *"${nl}T $id$nl"*) continue ;; esac
  if (set -C; printf 'jobkit-fence %s: never started\n' "$now" >"$jobs/$id.wrapper.log") 2>/dev/null; then
    echo "X $id"
  fi
done
echo '==all'
for f in "$jobs"/*.status; do [ -e "$f" ] || continue; f=${f##*/}; echo "A ${f%.status}"; done
echo '==end'

# jobkit probe: every piece of evidence for many jobs in one round trip. POSIX sh + awk (BusyBox
# too); a handful of processes whatever the number of jobs, no per-job shell loop.
# Usage: sh -c "$(cat probe.sh)" probe BASE_DIR   with stdin: lines "ID [PID [PROC_START]]"
# Output sections: ==boot, ==now, ==db (sqlite3 -json), ==files (E id / F<TAB>path<TAB>line /
# P pid), ==procs (S pid starttime state; a zombie is dead), ==tmux (T name, rc=N),
# ==all (A id: every state file on the host), ==end.
base=$1
jobs=$base/jobs
db=$base/server.db
# ids and pids the client asked about; anything not a valid id is dropped here
input=$(awk '$1 ~ /^[A-Za-z0-9_-]+$/ && length($1) <= 64 { print $1, ($2 ~ /^[0-9]+$/ ? $2 : "") }')
boot=''
{ read -r boot </proc/sys/kernel/random/boot_id; } 2>/dev/null
printf '==boot %s\n==now %s\n' "$boot" "$(date +%s)"
dbpids=''
if ! command -v sqlite3 >/dev/null 2>&1; then
  echo '==db no_sqlite3'
elif [ ! -f "$db" ]; then
  echo '==db missing'
else
  sql=$(printf '%s\n' "$input" | awk 'BEGIN { ORS = ""; q = sprintf("%c", 39)
      print "SELECT id, status, exit_code, signal, started_epoch, completed_epoch, boot_id, pid FROM jobs WHERE id IN (" }
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
      while (match(s, /"(wrapper_)?pid":[0-9]+/)) { v = substr(s, RSTART, RLENGTH); sub(/.*:/, "", v); print "P " v; s = substr(s, RSTART + RLENGTH) }
    }
    close(f) }')
printf '%s\n' "$files"
echo '==procs'
{ printf '%s\n' "$input" | awk '$2 != "" { print $2 }'; printf '%s\n' "$dbpids"; printf '%s\n' "$files" | sed -n 's/^P //p'; } |
  awk '/^[0-9]+$/ && !seen[$1]++ {
    f = "/proc/" $1 "/stat"
    if ((getline line < f) > 0) { s = line; sub(/.*\) /, "", s); split(s, a, " "); print "S " $1 " " a[20] " " a[1] }
    close(f) }'
echo '==tmux'
if command -v tmux >/dev/null 2>&1; then
  tmux -S "$base/tmux.sock" list-sessions -F 'T #{session_name}' 2>/dev/null
  echo "rc=$?"
else
  echo 'rc=none'
fi
echo '==all'
for f in "$jobs"/*.status; do [ -e "$f" ] || continue; f=${f##*/}; echo "A ${f%.status}"; done
echo '==end'

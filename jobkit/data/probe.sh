# jobkit probe: every piece of evidence for many jobs in one round trip. POSIX sh (BusyBox too).
# Usage: sh -c "$(cat probe.sh)" probe BASE_DIR   with stdin: lines "ID [PID [PROC_START]]"
# Output sections: ==boot, ==now, ==db, ==exists/==files (state files via one awk), ==procs
# (/proc start times and states via one awk; a zombie is dead), ==tmux, ==all (every state file on the host), ==end.
base=$1
jobs=$base/jobs
db=$base/server.db
ids='' pids=''
while read -r id pid _start; do
  case $id in '' | *[!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-]*) continue ;; esac
  ids="$ids $id"
  case $pid in '' | *[!0123456789]*) ;; *) pids="$pids $pid" ;; esac
done
boot=''
{ read -r boot </proc/sys/kernel/random/boot_id; } 2>/dev/null
printf '==boot %s\n==now %s\n' "$boot" "$(date +%s)"
dbpids=''
if ! command -v sqlite3 >/dev/null 2>&1; then
  echo '==db no_sqlite3'
elif [ ! -f "$db" ]; then
  echo '==db missing'
else
  list=''
  for id in $ids; do list="$list${list:+,}'$id'"; done
  out=$(sqlite3 -json -bail -cmd '.timeout 1500' "$db" \
    "SELECT id, status, exit_code, signal, started_epoch, completed_epoch, boot_id, pid FROM jobs WHERE id IN ($list);" 2>&1)
  printf '==db rc=%s\n%s\n' "$?" "$out"
  dbpids=$(printf '%s\n' "$out" | sed -n 's/.*"pid":\([0-9][0-9]*\).*/\1/p')
fi
echo '==files'
set --
for id in $ids; do
  if [ -f "$jobs/$id.status" ]; then echo "E $id"; set -- "$@" "$jobs/$id.status"; fi
done
filepids=''
if [ "$#" -gt 0 ]; then
  fout=$(awk '{ printf "F\t%s\t%s\n", FILENAME, $0
    s = $0
    while (match(s, /"(wrapper_)?pid":[0-9]+/)) {
      v = substr(s, RSTART, RLENGTH); sub(/.*:/, "", v); print "P " v; s = substr(s, RSTART + RLENGTH)
    } }' "$@")
  printf '%s\n' "$fout"
  filepids=$(printf '%s\n' "$fout" | sed -n 's/^P //p')
fi
echo '==procs'
set --
for p in $pids $dbpids $filepids; do
  case $p in '' | *[!0123456789]*) continue ;; esac
  [ -r "/proc/$p/stat" ] && set -- "$@" "/proc/$p/stat"
done
[ "$#" -gt 0 ] && awk '{ f = FILENAME; sub(/^\/proc\//, "", f); sub(/\/stat$/, "", f); s = $0; sub(/.*\) /, "", s); split(s, a, " "); print "S " f " " a[20] " " a[1] }' "$@" 2>/dev/null
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

#!/bin/sh
# Assemble a BusyBox-userland root filesystem in $1 from a Debian system that has busybox,
# openssh-server, tmux and sqlite3 installed: BusyBox applets for everything else.
set -eu
root=$1
mkdir -p "$root"
cd "$root"
mkdir -p bin sbin usr/bin usr/sbin usr/lib/openssh etc/ssh home/jobkit tmp run/sshd var/empty \
  proc sys dev root usr/local/sbin usr/share usr/lib/locale
chmod 1777 tmp
cp /bin/busybox bin/busybox
# every applet as a symlink, in /bin (POSIX tools) and /usr/bin, except flock-like extras
for a in $(/bin/busybox --list); do
  case $a in busybox) continue ;; esac
  ln -sf /bin/busybox "bin/$a"
done
ln -sf /bin/busybox sbin/pidof
copy_with_libs() { # copy binaries and the shared libraries they load
  for b in "$@"; do
    mkdir -p ".$(dirname "$b")"
    cp -L "$b" ".$b"
    ldd "$b" 2>/dev/null | awk '/=>/ { print $3 } /^\t\/lib/ { print $1 }' | while read -r lib; do
      [ -n "$lib" ] && [ -e "$lib" ] || continue
      mkdir -p ".$(dirname "$lib")"
      cp -L "$lib" ".$lib"
    done
  done
}
copy_with_libs /usr/sbin/sshd /usr/bin/tmux /usr/bin/sqlite3
# the dynamic loader, name-service and the terminal descriptions tmux needs
for l in /lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/libnss_files.so.2; do
  [ -e "$l" ] && { mkdir -p ".$(dirname "$l")"; cp -L "$l" ".$l"; }
done
cp -a /usr/lib/openssh/. usr/lib/openssh/ 2>/dev/null || true
# tmux refuses to run without a UTF-8 locale
mkdir -p usr/lib/locale
cp -a /usr/lib/locale/C.utf8 usr/lib/locale/ 2>/dev/null || true
mkdir -p usr/share/terminfo lib
cp -a /lib/terminfo lib/ 2>/dev/null || true
cp -a /usr/share/terminfo/. usr/share/terminfo/ 2>/dev/null || true
cat >etc/passwd <<'P'
root:x:0:0:root:/root:/bin/sh
sshd:x:100:65534::/run/sshd:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
jobkit:x:1000:1000::/home/jobkit:/bin/sh
P
cat >etc/group <<'G'
root:x:0:
nogroup:x:65534:
jobkit:x:1000:
G
cat >etc/shadow <<'S'
root:*:19000:0:99999:7:::
sshd:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
jobkit:*:19000:0:99999:7:::
S
chmod 600 etc/shadow
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\n' >etc/nsswitch.conf
printf '127.0.0.1 localhost\n' >etc/hosts
chown 1000:1000 home/jobkit
# what must not be there
for t in bash flock perl dash coreutils; do
  if [ -e "bin/$t" ] || [ -e "usr/bin/$t" ]; then echo "assemble: $t must not be in the image" >&2; exit 1; fi
done

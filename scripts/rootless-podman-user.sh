#!/usr/bin/env bash
# Prepare this machine for the lab on rootless Podman (tests/lab/test_podman.py), as root:
#   - the unprivileged user jobkit-rootless (a system user, no login shell) that runs the test's
#     Podman service;
#   - subordinate uid and gid ranges for it in /etc/subuid and /etc/subgid (65536 ids, after
#     every range already there), added only if it has none;
#   - /dev/net/tun usable by unprivileged users (mode 0666, udev's default on Debian): without
#     udev the kernel creates it 0600 and slirp4netns, rootless Podman's network, fails with
#     open("/dev/net/tun"): Permission denied.
# Idempotent: a second run changes nothing. Needs uidmap (newuidmap/newgidmap) and slirp4netns,
# which scripts/setup.sh installs.
set -euo pipefail
USER_NAME=jobkit-rootless
HOME_DIR=/var/lib/jobkit-rootless
COUNT=65536
log() { printf 'rootless-podman-user: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "run this as root"
  exit 1
fi

# one run at a time (two test sessions may start at once): useradd and usermod are not idempotent
mkdir -p /run/lock
exec 9>/run/lock/jobkit-rootless-podman-user.lock
flock 9

if ! getent passwd "$USER_NAME" >/dev/null; then
  log "creating user $USER_NAME"
  useradd --system --user-group --create-home --home-dir "$HOME_DIR" --shell /usr/sbin/nologin \
    --comment "jobkit lab on rootless Podman (tests)" "$USER_NAME"
fi

# The first free id after every range in FILE (and at least 100000, login.defs' SUB_UID_MIN).
next_free() {
  awk -F: 'BEGIN { n = 100000 } NF >= 3 && $2 + $3 > n { n = $2 + $3 } END { print n }' "$1" 2>/dev/null || echo 100000
}
for kind in uid gid; do
  file=/etc/sub$kind
  touch "$file"
  if ! grep -q "^$USER_NAME:" "$file"; then
    start=$(next_free "$file")
    log "adding sub${kind}s $start-$((start + COUNT - 1)) for $USER_NAME"
    usermod "--add-sub${kind}s" "$start-$((start + COUNT - 1))" "$USER_NAME"
  fi
done

if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
  log "making /dev/net/tun usable by unprivileged users (mode 0666, as udev sets it)"
  chmod 0666 /dev/net/tun
fi

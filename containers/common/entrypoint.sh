#!/bin/sh
# Lab container entrypoint: install the host key and the login user's authorized key given by
# the lab (so the client can pin the host key before the first connection), then run sshd in the
# foreground as the main process. POSIX sh: runs under BusyBox too.
set -eu
: "${JOBKIT_HOST_KEY:?the lab passes the server's private host key}"
: "${JOBKIT_AUTHORIZED_KEY:?the lab passes the client's public key}"
user=${JOBKIT_USER:-jobkit}
home=$(awk -F: -v u="$user" '$1 == u { print $6 }' /etc/passwd)
umask 077
printf '%s\n' "$JOBKIT_HOST_KEY" >/etc/ssh/ssh_host_ed25519_key
mkdir -p "$home/.ssh" /run/sshd
printf '%s\n' "$JOBKIT_AUTHORIZED_KEY" >"$home/.ssh/authorized_keys"
chown -R "$user" "$home/.ssh"
chmod 755 /run/sshd
unset JOBKIT_HOST_KEY JOBKIT_AUTHORIZED_KEY
exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config

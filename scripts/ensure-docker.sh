#!/usr/bin/env bash
# Make sure a Docker engine answers. If none does and we are root, start dockerd in the
# background (log: /var/log/jobkit-dockerd.log) and wait for its socket. Prints what it did.
set -uo pipefail
if docker info >/dev/null 2>&1; then
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "ensure-docker: no Docker engine answers and dockerd is not installed" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-docker: no Docker engine answers; start one (dockerd) or run setup as root" >&2
  exit 1
fi
echo "ensure-docker: no Docker engine answered; starting dockerd in the background (log: /var/log/jobkit-dockerd.log)" >&2
nohup dockerd >/var/log/jobkit-dockerd.log 2>&1 </dev/null &
for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    echo "ensure-docker: dockerd is up" >&2
    exit 0
  fi
  sleep 0.5
done
echo "ensure-docker: dockerd did not answer within 60 s; see /var/log/jobkit-dockerd.log" >&2
exit 1

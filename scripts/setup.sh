#!/usr/bin/env bash
# Install everything jobkit's main job and test suite need on a Debian-like machine, as root:
# apt packages, the npm test tools (bats), a Python virtualenv with jobkit and its dev tools, and
# a running Docker engine (started here in the background when none answers); as root, the
# user, subordinate ids and /dev/net/tun mode of the rootless Podman test
# (scripts/rootless-podman-user.sh). Idempotent: a
# second run installs nothing and takes a second or two.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
log() { printf 'setup: %s\n' "$*" >&2; }

APT_PACKAGES=(
  tmux sqlite3 procps util-linux coreutils findutils gawk git ca-certificates
  dash mksh busybox yash zsh posh ksh      # the shell matrix the wrapper is tested on
  shellcheck                               # lints the wrapper and the scripts
  openssh-client openssh-server            # ssh(1) for printed command lines; sshd for tests
  debootstrap docker.io                    # offline lab images
  podman                                   # the lab on rootful Podman (tests/lab/test_podman.py)
  uidmap slirp4netns                       # ... and on rootless Podman (newuidmap/newgidmap, its network)
  python3-venv
)
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(nodejs npm)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    log "missing apt packages: ${missing[*]}; run this script as root (or install them)"
    exit 1
  fi
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The unprivileged user, subordinate ids and /dev/net/tun mode the rootless Podman test needs
if [ "$(id -u)" = 0 ]; then
  bash "$ROOT/scripts/rootless-podman-user.sh"
fi

# npm test tools, pinned by package-lock.json
if [ ! -x node_modules/bats/bin/bats ] || [ package-lock.json -nt node_modules/.jobkit-stamp ]; then
  log "installing npm test tools (bats, bats-support, bats-assert)"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  touch node_modules/.jobkit-stamp
fi

# Python virtualenv with jobkit (editable) and the dev tools
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.jobkit-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing jobkit and its dev tools into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
  printf '%s\n' "$want" >"$stamp"
fi

# A Docker engine for the lab. Nothing is ever pulled: images are built offline.
if [ "${JOBKIT_NO_DOCKER:-0}" != 1 ]; then
  bash "$ROOT/scripts/ensure-docker.sh" || log "no Docker engine: lab targets unavailable, the embedded 'local' target still works"
fi
log "ready"

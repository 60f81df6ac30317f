#!/usr/bin/env bash
# Make a Docker engine, a base image and a wheelhouse available on a machine without registry access
# (this project's CI). Real users skip all this: `docker build .` uses the official python:3.11-slim.
#   - dockerd from Debian's docker.io, started with --bridge=none --iptables=false (containers use --network host)
#   - base images by debootstrap (bookworm minbase), imported with `docker import`: `rnnserve-base` with python3
#     and venv (the runtime stage), `rnnserve-build` with a C compiler and Python's headers too (the build stage)
#   - wheelhouse/: the runtime's wheels, downloaded on the host (pip inside a build cannot verify TLS here)
# Idempotent: each step is skipped when its result is already there. Exits non-zero if no engine can be had.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v docker-compose >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq docker.io debootstrap docker-compose >/dev/null
  fi
  nohup dockerd --bridge=none --iptables=false >/tmp/rnnserve-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null
fi
command -v docker-compose >/dev/null || { apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; }

debootstrap_image() {  # NAME PACKAGES: a minbase bookworm with these packages, as a local image
  docker image inspect "$1" >/dev/null 2>&1 && return
  root=$(mktemp -d /tmp/rnnserve-rootfs.XXXXXX)
  debootstrap --variant=minbase --include="$2" bookworm "$root" >"/tmp/rnnserve-debootstrap-$1.log"
  # What an image never needs: downloaded packages, package lists, docs, manuals, translations.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc \
    "$root"/usr/share/man "$root"/usr/share/info "$root"/usr/share/locale
  tar -C "$root" -c . | docker import - "$1" >/dev/null
  rm -rf "$root"
}
debootstrap_image rnnserve-base python3,python3-venv,ca-certificates
debootstrap_image rnnserve-build python3,python3-venv,python3-dev,gcc,libc6-dev,ca-certificates

# The runtime's dependencies and the store extra's (the image built with --build-arg EXTRAS=store).
requirements=$($PY -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['store']))")
if [ ! -f wheelhouse/.complete ] || [ "$requirements" != "$(cat wheelhouse/requirements.txt)" ]; then
  rm -rf wheelhouse && mkdir -p wheelhouse
  echo "$requirements" > wheelhouse/requirements.txt
  $PY -m pip download -q -d wheelhouse --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform linux_x86_64 --implementation cp \
    -r wheelhouse/requirements.txt "setuptools>=68" wheel
  touch wheelhouse/.complete
fi
echo "docker engine, base images rnnserve-base and rnnserve-build, and wheelhouse/ are ready"

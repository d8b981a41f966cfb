#!/usr/bin/env bash
# Installs Debian's Prometheus server, which tests/test_prometheus.py starts on loopback to scrape a running
# `tensorwire serve` and query it. Idempotent: does nothing (not even apt-get update) when it is present.
# Called by .ci/run; runs as root (or through sudo where it is available).
set -euo pipefail

packages=(
  prometheus  # the Prometheus server (2.42 in bookworm); the test runs /usr/bin/prometheus, not the service
)

missing=()
for p in "${packages[@]}"; do
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != "installed" ]; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "prometheus: already installed: ${packages[*]}"
else
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "prometheus: not root and no sudo; cannot install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  echo "prometheus: installing: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "prometheus: installed: ${missing[*]}"
fi

echo "prometheus: $(prometheus --version 2>&1 | head -n 1)"

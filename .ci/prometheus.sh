#!/usr/bin/env bash
# Installs Debian's Prometheus server, which tests/server/test_prometheus.py starts on loopback to scrape a running
# `tensorwire serve` and query it. Idempotent: does nothing (not even apt-get update) when it is present.
# Called by .ci/run; runs as root (or through sudo where it is available).
set -euo pipefail

packages=(
  prometheus  # the Prometheus server (2.42 in bookworm); the test runs /usr/bin/prometheus, not the service
)

# shellcheck source=apt-packages.sh
source "$(dirname "$0")/apt-packages.sh"
install_packages prometheus "${packages[@]}"

echo "prometheus: $(prometheus --version 2>&1 | head -n 1)"

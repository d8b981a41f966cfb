#!/usr/bin/env bash
# The system packages some tests need (the Go toolchain for the Go client test, Debian's prometheus for the
# metrics test), installed through the .ci scripts when this runs as root or with passwordless sudo. Without
# either it says which tests will skip, and how to install what they need, and exits 0: `make test` goes on
# (those tests skip with the same reason; under CI=true they fail instead).
set -uo pipefail
cd "$(dirname "$0")"
if [ "$(id -u)" -ne 0 ] && ! sudo -n true 2>/dev/null; then
  echo "make test: not root and no passwordless sudo, so the Go client and Prometheus tests skip unless their" \
       "packages are installed (sudo bash .ci/go-toolchain.sh; sudo bash .ci/prometheus.sh)"
  exit 0
fi
for script in go-toolchain.sh prometheus.sh; do
  bash "$script" || echo "make test: .ci/$script failed; the tests that need it will skip with the reason"
done

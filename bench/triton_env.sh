#!/usr/bin/env bash
# Unpacks NVIDIA Triton 2.51 (tritonserver and its Python backend, shipped inside the nvidia-pytriton 0.7.0
# wheel on PyPI) into DIR, and copies the backend stub built for this Python beside the backend, where
# tritonserver looks for it. `tensorwire bench peers --triton DIR/pytriton/tritonserver` runs it.
# Usage: bash bench/triton_env.sh [DIR]   (default /work/triton). Idempotent. No GPU needed.
set -euo pipefail

dir=${1:-/work/triton}
python=${PYTHON:-python3}
server="$dir/pytriton/tritonserver"

if [ ! -x "$server/bin/tritonserver" ]; then
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$python" -m pip install -q --no-deps --target "$dir" 'nvidia-pytriton==0.7.0'
fi
version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
stub="$server/python_backend_stubs/$version/triton_python_backend_stub"
[ -e "$stub" ] || { echo "triton: no Python backend stub for Python $version in $server" >&2; exit 1; }
cp -f "$stub" "$server/backends/python/"
"$server/bin/tritonserver" --help > /dev/null 2>&1 || true   # prints usage and exits 1 by design
missing=$(ldd "$server/bin/tritonserver" "$server/backends/python/triton_python_backend_stub" | grep 'not found' || true)
[ -z "$missing" ] || { echo "triton: missing libraries: $missing" >&2; exit 1; }
echo "triton: ready at $server"

#!/usr/bin/env bash
# Builds a separate venv for NVIDIA's perf_analyzer (the C++ client shipped inside tritonclient 2.41.0's
# wheel) so its pins never touch the project's venv. perf_analyzer needs two shared libraries the wheel
# does not carry: libb64 (Debian's libb64-0d) and libcudart 12 (the nvidia-cuda-runtime-cu12 wheel, which
# it loads even on a CPU-only host). The venv gets a wrapper bin/perf_analyzer that puts that libcudart on
# LD_LIBRARY_PATH; `tensorwire bench triton-perf --perf-analyzer VENV/bin/perf_analyzer` uses it.
# Usage: bash bench/perf_analyzer_env.sh [VENV]   (default /work/venv-pa). Idempotent.
set -euo pipefail

venv=${1:-/work/venv-pa}
python=${PYTHON:-python3}

# shellcheck source=../.ci/apt-packages.sh
source "$(dirname "$0")/../.ci/apt-packages.sh"
install_packages perf_analyzer libb64-0d

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/python" -m pip install -q 'tritonclient[grpc]==2.41.0' 'nvidia-cuda-runtime-cu12'

# The wheel installs the real binary as a data file, VENV/bin/perf_analyzer (an ELF); move it aside once so
# the wrapper can take its name (a pip reinstall puts the ELF back, and the next run moves it again).
cudart_dir=$("$venv/bin/python" -c 'import pathlib, nvidia.cuda_runtime as m; print(pathlib.Path(list(m.__path__)[0]) / "lib")')
[ -e "$cudart_dir/libcudart.so.12" ] || { echo "perf_analyzer: libcudart.so.12 not found in $cudart_dir" >&2; exit 1; }
real="$venv/bin/perf_analyzer.real"
if head -c 4 "$venv/bin/perf_analyzer" 2>/dev/null | grep -q 'ELF'; then
  mv -f "$venv/bin/perf_analyzer" "$real"
fi
[ -x "$real" ] || { echo "perf_analyzer: binary not found (expected $real)" >&2; exit 1; }

wrapper="$venv/bin/perf_analyzer"
cat > "$wrapper" <<WRAP
#!/usr/bin/env bash
# Written by bench/perf_analyzer_env.sh: runs tritonclient 2.41.0's perf_analyzer with libcudart 12 found.
export LD_LIBRARY_PATH="$cudart_dir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$real" "\$@"
WRAP
chmod +x "$wrapper"

# perf_analyzer 2.41 prints its usage for --help but exits 99 ("unrecognized option"); --version exits 0
# only when the binary and both libraries load.
version=$("$wrapper" --version 2>&1) || { echo "$version" | tail -n 5 >&2; echo "perf_analyzer: does not start" >&2; exit 1; }
echo "perf_analyzer: ready at $wrapper ($version)"

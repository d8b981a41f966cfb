"""The 'clients in Go' promise: stubs generated from proto/ with stock protoc-gen-go/protoc-gen-go-grpc.

tests/go/build.sh generates Go stubs from proto/ and builds tests/go/kserve_client offline against
Debian's packaged grpc-go (GOPATH mode over /usr/share/gocode). The program then talks to a real
tensorwire server: ServerLive, ServerReady, ModelMetadata, ModelInfer on add_sub with raw and typed
FP32 inputs (every number checked), and a wrong datatype that must come back InvalidArgument.

Without the toolchain the tests skip, except in CI (CI=true), where they fail: .ci/go-toolchain.sh
installs it there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from system_tools import require_system

from tensorwire.bench.procnet import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "tests" / "go" / "build.sh"
GOCODE = Path(os.environ.get("GOCODE", "/usr/share/gocode"))

TOOLS = ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc")
GO_SOURCES = ("google.golang.org/grpc", "google.golang.org/protobuf", "github.com/golang/protobuf/proto")
INSTALL = (
    "apt-get install golang-go golang-google-grpc-dev protoc-gen-go protoc-gen-go-grpc protobuf-compiler"
    " golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev  (or: bash .ci/go-toolchain.sh)"
)

BUILD_TIMEOUT_S = 600  # a cold Go build cache on 2 shared cores
RUN_TIMEOUT_S = 120

EXPECTED_LINES = (
    "PASS ServerLive: live=true",
    "PASS ServerReady: ready=true",
    "PASS ModelMetadata(add_sub)",
    "PASS ModelInfer raw: OUTPUT0 = INPUT0 + INPUT1",
    "PASS ModelInfer raw: OUTPUT1 = INPUT0 - INPUT1",
    "PASS ModelInfer fp32_contents: OUTPUT0 = INPUT0 + INPUT1",
    "PASS ModelInfer fp32_contents: OUTPUT1 = INPUT0 - INPUT1",
    "PASS ModelInfer wrong datatype: InvalidArgument",
)


@dataclass(frozen=True)
class GoClient:
    binary: Path

    def run(self, *args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def _missing_toolchain() -> list[str]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    missing += [str(GOCODE / "src" / pkg) for pkg in GO_SOURCES if not (GOCODE / "src" / pkg).is_dir()]
    return missing


def _describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


@pytest.fixture(scope="session")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> GoClient:
    """Generates the stubs and builds the client once per session, in a temporary directory."""
    require_system("Go toolchain", _missing_toolchain(), INSTALL)

    work = tmp_path_factory.mktemp("go-client")
    binary = work / "bin" / "kserve_client"
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SH), "-g", str(work / "gopath"), "-o", str(binary)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired as exc:
        output = f"--- stdout ---\n{exc.stdout!s}\n--- stderr ---\n{exc.stderr!s}"
        pytest.fail(f"tests/go/build.sh took over {BUILD_TIMEOUT_S}s:\n{output}", pytrace=False)
    if proc.returncode != 0 or not binary.is_file():
        pytest.fail(f"tests/go/build.sh failed: {_describe(proc)}", pytrace=False)
    return GoClient(binary)


def test_go_client_infers_add_sub(go_client: GoClient, server) -> None:
    """The Go client's checks (metadata, raw and typed FP32 inference, InvalidArgument) all pass."""
    proc = go_client.run("-addr", server.address, "-model", "add_sub", "-timeout", "30s")
    report = _describe(proc)
    assert proc.returncode == 0, f"Go client failed against {server.address}: {report}"
    lines = proc.stdout.splitlines()
    assert lines and lines[-1] == "OK", f"Go client did not end with OK: {report}"
    for expected in EXPECTED_LINES:
        assert any(line.startswith(expected) for line in lines), f"missing {expected!r}: {report}"
    assert not any(line.startswith("FAIL") for line in lines), report


def test_go_client_reports_unreachable_server(go_client: GoClient) -> None:
    """With nothing listening, the program fails with a message and a non-zero exit, not OK."""
    port = free_port()  # closed again before the client dials: nothing listens there
    proc = go_client.run("-addr", f"127.0.0.1:{port}", "-timeout", "2s", timeout=60)
    report = _describe(proc)
    assert proc.returncode != 0, f"Go client succeeded with no server: {report}"
    assert "FAIL connect" in proc.stdout, report
    assert "OK" not in proc.stdout.splitlines(), report

"""A real Prometheus server (Debian's `prometheus`, which .ci/run installs) scrapes a running server under
load; its query API must return the success count that was sent and a latency quantile from the histogram.

Without the binary the test skips with the command that installs it, and fails under CI (tests/system_tools.py).
Added test time: ~14 s (Prometheus start, scrapes every second, a few seconds of load).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

from clients import Clients, wait_until
from models import ADD_SUB_CONFIG, add_sub_model, write_model
from serving import start_server
from system_tools import require_system

from tensorwire.bench.procnet import free_port
from tensorwire.launcher import stop_process

PROMETHEUS = "prometheus"


@contextlib.contextmanager
def prometheus(tmp_path, target_port: int):
    binary = shutil.which(PROMETHEUS)
    require_system("Debian's prometheus", [] if binary else [PROMETHEUS], "sudo bash .ci/prometheus.sh")
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: tensorwire
    static_configs: [{{targets: ["127.0.0.1:{target_port}"]}}]
""")
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(url, proc), "prometheus ready", 60)
        yield url
    finally:
        stop_process(proc)
        log.close()


def _ready(url: str, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, f"prometheus exited with {proc.returncode}"
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def query(url: str, promql: str) -> list:
    with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}), timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def _value(url: str, promql: str) -> float | None:
    result = query(url, promql)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_triton_metrics_under_load(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    with start_server(repo) as s, prometheus(tmp_path, s.metrics_port) as prom:
        with Clients(s.address, n=4) as clients:
            wait_until(lambda: _value(prom, 'up{job="tensorwire"}') == 1.0, "target up", 60)
            clients.wait_for_requests(50)
            time.sleep(3)  # a few scrapes while under load, for rate()
        assert clients.failures == []
        sent = clients.total
        success = 'nv_inference_request_success{model="add_sub",version="1"}'
        wait_until(lambda: _value(prom, success) == sent, f"{success} == {sent}", 60)
        quantile = ('histogram_quantile(0.5, sum by (le) (rate('
                    'tensorwire_inference_request_duration_us_bucket{model="add_sub"}[30s])))')
        wait_until(lambda: (_value(prom, quantile) or 0) > 0, "a p50 from the histogram", 60)
        p50_us = _value(prom, quantile)
        assert 0 < p50_us < 10_000_000

"""The Prometheus endpoint of a real server: Triton's names and labels, counts that match what was sent,
the histograms, process metrics, port 0 and a taken port, and one scrape across --workers 2."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from clients import add_sub_inputs, sample, scrape
from models import ADD_SUB_CONFIG, add_sub_model, write_model
from serving import start_server
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics") / "models"
    write_model(root, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    return root


def test_triton_metrics_count_what_was_sent(repo):
    with start_server(repo, "--log-requests", "1", "--log-format", "json") as s:
        c = grpcclient.InferenceServerClient(s.address)
        for i in range(20):
            c.infer("add_sub", add_sub_inputs(float(i)), request_id=f"req-{i}")
        wrong = [grpcclient.InferInput(n, [1, 8], "FP32") for n in ("INPUT0", "INPUT1")]
        for t in wrong:
            t.set_data_from_numpy(np.zeros((1, 8), np.float32))
        for _ in range(3):
            with pytest.raises(InferenceServerException):
                c.infer("add_sub", wrong)
        m = scrape(s.metrics_url)
        v = {"model": "add_sub", "version": "1"}
        assert sample(m, "nv_inference_request_success", **v) == 20
        assert sample(m, "nv_inference_count", **v) == 20
        assert sample(m, "nv_inference_exec_count", **v) == 20
        assert sample(m, "nv_inference_request_failure", reason="OTHER", **v) == 3
        assert sample(m, "nv_inference_request_failure", reason="REJECTED", **v) == 0
        for name in ("request", "queue", "compute_input", "compute_infer", "compute_output"):
            assert sample(m, f"nv_inference_{name}_duration_us", **v) >= 0
        assert sample(m, "nv_inference_request_duration_us", **v) > 0
        assert sample(m, "nv_inference_pending_request_count", **v) == 0
        assert sample(m, "tensorwire_inference_request_duration_us_count", **v) == 20
        assert sample(m, "tensorwire_inference_request_duration_us_bucket", le="+Inf", **v) == 20
        assert sample(m, "tensorwire_inference_batch_size_bucket", le="1", **v) == 20
        assert 0 <= sample(m, "nv_cpu_utilization") <= 1
        assert sample(m, "nv_cpu_memory_total_bytes") >= sample(m, "nv_cpu_memory_used_bytes") > 0
        assert sample(m, "process_resident_memory_bytes") > 0
    log = s.log()
    assert "plaintext HTTP, no authentication" in log
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]  # --log-format json
    names = [e.get("event") for e in events]
    for name in ("metrics_started", "model_loaded", "server_draining", "server_stopped"):
        assert name in names, name
    assert next(e for e in events if e.get("event") == "model_loaded")["model"] == "add_sub"
    assert '"event": "request"' in log and '"request_id": "req-7"' in log and '"status": "OK"' in log
    assert '"status": "INVALID_ARGUMENT"' in log


def test_metrics_off_opens_no_port(repo):
    with start_server(repo, "--allow-metrics=false") as s:
        assert s.metrics_port is None
        assert grpcclient.InferenceServerClient(s.address).is_server_ready()


def test_a_taken_metrics_port_fails_the_start_naming_it(repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "tensorwire", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
             "--grpc-port", "0", "--metrics-port", str(port)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"127.0.0.1:{port}" in proc.stderr and f"--metrics-port {port}" in proc.stderr, proc.stderr


def test_one_scrape_sees_every_worker(repo):
    """--workers 2: the parent's endpoint sums both workers' counters (added test time: ~10 s)."""
    with start_server(repo, "--workers", "2") as s:
        sent = 0
        for _ in range(12):  # a new channel per round: the kernel spreads connections over the workers
            c = grpcclient.InferenceServerClient(s.address)
            for i in range(5):
                c.infer("add_sub", add_sub_inputs(float(i)))
                sent += 1
            c.close()
        m = scrape(s.metrics_url)
        assert sample(m, "nv_inference_request_success", model="add_sub", version="1") == sent
        workers = {dict(labels)["worker"] for name, labels in m if name == "process_resident_memory_bytes"}
        assert workers == {"0", "1"}


def test_metrics_interval_sets_how_often_the_page_is_rebuilt(repo):
    """--metrics-interval-ms 0 rebuilds the page on every scrape, so it shows the request just answered;
    within a long interval a second scrape gets the page built for the first."""
    v = {"model": "add_sub", "version": "1"}
    for interval, counted in (("0", 1), ("600000", 0)):
        with start_server(repo, "--metrics-interval-ms", interval) as s:
            c = grpcclient.InferenceServerClient(s.address)
            before = sample(scrape(s.metrics_url), "nv_inference_request_success", **v)
            c.infer("add_sub", add_sub_inputs(1.0))
            after = sample(scrape(s.metrics_url), "nv_inference_request_success", **v)
            assert after == before + counted, (interval, before, after)

"""`tensorwire bench peers` without perf_analyzer or Triton: the 60-line grpcio peer as a real server answering
tritonclient (what perf_analyzer asks, and the model's right answer), the Triton repository it writes, and
the ratios taken within rounds.

perf_analyzer and Triton (~55 MB from nvidia-pytriton) do not run here: a run of the bench takes minutes
(bench/results/peers/ has the figures and the command).
"""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as tc
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tensorwire.bench import peer_triton, peers, timing
from tensorwire.bench.models import CPU_CONFIG, mlp_model, write_repository
from tensorwire.launcher import launch


def test_the_60_line_peer_answers_what_perf_analyzer_asks(tmp_path):
    repo = write_repository(tmp_path / "models", {"mlp": (mlp_model(), CPU_CONFIG)})
    x = np.random.default_rng(3).standard_normal((1, 512)).astype(np.float32)
    expected = timing.cpu_session(repo / "mlp" / "1" / "model.onnx", 1).run(None, {"input": x})[0]
    with launch(["-m", "tensorwire.bench.peer_grpcio", "--model-repository", str(repo)]) as server, \
            tc.InferenceServerClient(server.address) as client:
        assert client.is_server_live() and client.is_model_ready("mlp")
        assert client.get_server_metadata().name == "grpcio60"
        config = client.get_model_config("mlp").config
        assert config.max_batch_size == 8 and list(config.input[0].dims) == [512]
        assert list(client.get_model_metadata("mlp").inputs[0].shape) == [-1, 512]
        inp = tc.InferInput("input", [1, 512], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("mlp", [inp]).as_numpy("output"), expected)
        assert peers._inference_count(server.address, "mlp") == 1


def test_the_triton_repository_is_a_python_backend_model_per_onnx_file(tmp_path):
    repo = write_repository(tmp_path / "models", {"mlp": (mlp_model(), CPU_CONFIG)})
    target = peer_triton.write_repository(repo, tmp_path / "triton", 1, spinning=False)
    config = text_format.Parse((target / "mlp" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (config.backend, config.max_batch_size) == ("python", 8)
    assert [(t.name, list(t.dims)) for t in config.input] == [("input", [512])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("output", [10])]
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    source = (target / "mlp" / "1" / "model.py").read_text()
    compile(source, "model.py", "exec")
    assert str((repo / "mlp" / "1" / "model.onnx").resolve()) in source
    assert "bin/tritonserver not found" in peer_triton.check(tmp_path)  # the reason, not a crash


def test_ratios_are_taken_within_each_round():
    def run(peer: str, r: int, throughput: float, cpu: float) -> dict:
        return {"case": "mlp_c8", "peer": peer, "round": r, "server_cpu": {"us_per_request": cpu},
                "figures": {"Inferences/Second": throughput, "p50 latency": 100.0, "Server Queue": 5.0}}

    payload = {"runs": [run("tensorwire", 0, 300, 200), run("triton", 0, 100, 400),
                        run("tensorwire", 1, 600, 100), run("triton", 1, 400, 400)]}
    plan = peers.Plan(None, None, peers=("tensorwire", "triton"), cases=("mlp_c8",))
    mine = next(r for r in peers.summarize(payload, plan) if r["peer"] == "tensorwire")
    assert mine["throughput_vs_triton"] == np.median([3.0, 1.5])  # not 450 / 250
    assert mine["cpu_us_vs_triton"] == np.median([0.5, 0.25])
    assert mine["steps_us"]["Server Queue"] == 5.0 and mine["steps_us"]["Client Send"] is None


def test_outputs_are_compared_bit_for_bit_and_a_difference_says_which_model_and_how_much():
    reference = {"mlp": np.array([[1.0, 2.0]], np.float32), "small2k": np.array([[0.5]], np.float32)}
    assert peers._differences(reference, {k: v.copy() for k, v in reference.items()}) == "equal"
    nudged = {"mlp": reference["mlp"].copy(), "small2k": np.nextafter(reference["small2k"], np.float32(1))}
    assert peers._differences(reference, nudged) == "small2k differs (max |diff| 6e-08)"
    reshaped = {"mlp": reference["mlp"].reshape(2, 1), "small2k": reference["small2k"]}
    assert peers._differences(reference, reshaped) == "mlp differs (shape (2, 1) against (1, 2))"

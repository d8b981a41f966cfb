"""The 60-line grpcio server: the plainest Python server a user could write, a peer in `bench peers`.

Exactly this, nothing more: grpcio's sync server (``grpc.server`` with a ThreadPoolExecutor of
``--threads``), the servicer classes generated from Triton's proto (tritonclient's ``service_pb2``), each
input tensor taken with ``np.frombuffer(raw_input_contents[i])`` and reshaped, ``session.run`` on one ONNX
Runtime session per model (``timing.cpu_session``'s options: the same for every peer), every output sent
back as ``tobytes()``. It answers what perf_analyzer asks (ServerLive, ServerReady, ServerMetadata,
ModelReady, ModelMetadata, ModelConfig, ModelInfer) and ModelStatistics with an inference count only,
which the bench reads to divide CPU by requests. No validation, no limits, no batching: it is a measuring
stick.

``python -m tensorwire.bench.peer_grpcio --model-repository R --port 0 --port-file F [--intra-op-threads N]``
"""

from __future__ import annotations

import argparse
import re
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tensorwire.bench.timing import cpu_session

ORT_TO_TRITON = {"tensor(float)": "FP32"}


class Model:
    """One ONNX model of the repository: its session, its tensors' metadata, its inference count."""

    def __init__(self, directory: Path, intra_op_threads: int, spinning: bool) -> None:
        self.name = directory.name
        config = (directory / "config.pbtxt").read_text() if (directory / "config.pbtxt").exists() else ""
        found = re.search(r"max_batch_size:\s*(\d+)", config)
        self.max_batch_size = int(found.group(1)) if found else 0
        self.session = cpu_session(directory / "1" / "model.onnx", intra_op_threads, spinning=spinning)
        self.inputs = [(i.name, ORT_TO_TRITON[i.type], [-1, *i.shape[1:]]) for i in self.session.get_inputs()]
        self.outputs = [(o.name, ORT_TO_TRITON[o.type], [-1, *o.shape[1:]]) for o in self.session.get_outputs()]
        self.count = 0

    def metadata(self) -> pb.ModelMetadataResponse:
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(name=self.name, versions=["1"], platform="onnxruntime_onnx",
                                        inputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in self.inputs],
                                        outputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in self.outputs])

    def config(self) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=mc.ModelConfig(
            name=self.name, platform="onnxruntime_onnx", max_batch_size=self.max_batch_size,
            input=[mc.ModelInput(name=n, data_type=mc.TYPE_FP32, dims=s[1:]) for n, _, s in self.inputs],
            output=[mc.ModelOutput(name=n, data_type=mc.TYPE_FP32, dims=s[1:]) for n, _, s in self.outputs]))


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The servicer a user would write from the generated classes."""

    def __init__(self, models: dict[str, Model]) -> None:
        self.models = models

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="grpcio60", version="1")

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name in self.models)

    def ModelMetadata(self, request, context):
        return self.models[request.name].metadata()

    def ModelConfig(self, request, context):
        return self.models[request.name].config()

    def ModelStatistics(self, request, context):
        return pb.ModelStatisticsResponse(model_stats=[
            pb.ModelStatistics(name=m.name, version="1", inference_count=m.count) for m in self.models.values()])

    def ModelInfer(self, request, context):
        model = self.models[request.model_name]
        feeds = {i.name: np.frombuffer(raw, np.float32).reshape(i.shape)
                 for i, raw in zip(request.inputs, request.raw_input_contents)}
        results = model.session.run(None, feeds)
        response = pb.ModelInferResponse(model_name=model.name, model_version="1", id=request.id)
        for (name, datatype, _), value in zip(model.outputs, results):
            response.outputs.add(name=name, datatype=datatype, shape=value.shape)
            response.raw_output_contents.append(value.tobytes())
        model.count += 1
        return response


def main(argv: list[str] | None = None) -> int:
    """Serve the repository's models until SIGTERM."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repository", type=Path, required=True, help="directories NAME/1/model.onnx")
    p.add_argument("--port", type=int, default=0, help="gRPC port (default 0: a free one)")
    p.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    p.add_argument("--threads", type=int, default=8, help="grpcio handler threads (default 8)")
    p.add_argument("--intra-op-threads", type=int, default=1, help="ORT intra-op threads (default 1)")
    p.add_argument("--intra-op-spinning", action="store_true", help="ORT intra-op spinning (default off)")
    args = p.parse_args(argv)
    models = {d.name: Model(d, args.intra_op_threads, args.intra_op_spinning)
              for d in sorted(args.model_repository.iterdir()) if (d / "1" / "model.onnx").exists()}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads),
                         options=[("grpc.max_receive_message_length", 64 << 20),
                                  ("grpc.max_send_message_length", 64 << 20)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(models), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    if args.port_file:
        args.port_file.write_text(str(port))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

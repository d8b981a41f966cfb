"""Server settings: one dataclass, filled from CLI flags (``tensorwire serve``) or by code."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# A batch of 64 images of 3x224x224 FP32 is 38.5 MB; 64 MiB leaves room for the envelope.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class ServerSettings:
    model_repository: Path
    host: str = "0.0.0.0"
    grpc_port: int = 8001
    # Written with the bound port once listening (useful with grpc_port=0).
    port_file: Path | None = None
    max_receive_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_send_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Threads that run RPC handlers. A request waiting in a batcher queue holds one, so this bounds
    # the requests that can be queued at once; ONNX Runtime releases the GIL while it computes.
    handler_threads: int = 64
    # Requests a dynamic batcher queues before answering RESOURCE_EXHAUSTED, unless the model's
    # dynamic_batching.default_queue_policy.max_queue_size says otherwise.
    max_queue_size: int = 1024
    # RPCs admitted at once; beyond that the server answers RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = 1024
    # "auto" (extension if built), "ext" or "twin"; empty: TENSORWIRE_FASTPATH, else auto (tensorwire.fastpath).
    fastpath: str = ""
    # Only these models at startup (empty: every model in the repository).
    load_models: list[str] = field(default_factory=list)
    # Execution providers to try, in order, overriding each model's config ("tensorrt,cuda,cpu").
    providers: list[str] = field(default_factory=list)
    # ORT threads per session; 0 lets ONNX Runtime choose (one per core).
    intra_op_threads: int = 0
    # Cores this process's sessions share when the count is not set (0: its affinity mask). Worker
    # processes that share their CPUs get their part here, which leaves the load-time choice open.
    session_cpus: int = 0
    inter_op_threads: int = 0
    # Whether ORT's intra-op threads spin-wait for work after a run. Spinning lowers ORT's own latency
    # but burns the cores gRPC needs to send the answer; see bench/fastpath_e2e.py for the trade.
    intra_op_spinning: bool = True
    # Raise glibc malloc's mmap/trim thresholds so large request buffers are reused, not page-faulted
    # in on every request (tensorwire.server.allocator).
    malloc_tuning: bool = True
    # CPUs the server process is pinned to (empty: whatever the OS allows); with workers, each worker
    # gets its own slice when there are enough (tensorwire.server.affinity).
    cpu_affinity: list[int] = field(default_factory=list)
    # max_batch_size given to models whose config does not set one but whose graph can batch.
    default_max_batch_size: int = 4
    # ServerReady is false while any model that was asked for at startup failed to load.
    strict_readiness: bool = True
    # Seconds in-flight RPCs get to finish after SIGTERM/SIGINT.
    shutdown_grace_s: float = 10.0
    # Where TensorRT keeps its engine cache.
    trt_cache_dir: Path = field(default_factory=lambda: Path(os.environ.get("TENSORWIRE_TRT_CACHE", "")
                                                             or Path.home() / ".cache" / "tensorwire" / "trt"))
    log_level: str = "INFO"
    # Server processes sharing the port (SO_REUSEPORT); see tensorwire.server.workers.
    workers: int = 1
    # Set on worker processes: bind the port with SO_REUSEPORT alongside the other workers.
    reuse_port: bool = False

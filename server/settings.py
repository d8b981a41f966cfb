"""Server settings: one dataclass, the single source of every `tensorwire serve` flag and its default.

Each field that the command line sets carries a :class:`Flag` in its metadata (its help text and how a
string becomes the value); ``tensorwire.server.flags`` builds the parser from these fields and the
settings back from parsed arguments, so a default is written once, here, and ``--help`` shows it.
Code (tests, benchmarks, the demo) constructs ``ServerSettings`` directly with the same defaults.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensorwire.fastpath import CODEC_CHOICES

MODEL_CONTROL_MODES = ("none", "explicit", "poll")
LOG_FORMATS = ("default", "ISO8601", "json")
GRPC_FRONTENDS = ("core", "grpcio")


@dataclass(frozen=True)
class Flag:
    """How a setting appears on the command line.

    ``parse`` turns the flag's text into the value (default: the field's type); ``negate`` names the flag
    that turns a True boolean off; ``repeat`` makes a list setting take one item per use of the flag;
    ``shown`` is how the default reads in ``--help`` when ``str(default)`` would mislead; ``optional_bool``
    lets a boolean take Triton's ``--flag=true|false`` form as well as the bare ``--flag``.
    """

    help: str
    name: str = ""
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    negate: str = ""
    repeat: bool = False
    choices: tuple = ()
    shown: str = ""
    aliases: tuple[str, ...] = ()
    optional_bool: bool = False


def setting(default: Any = None, *, factory: Callable[[], Any] | None = None, **flag: Any) -> Any:
    """A dataclass field with its command-line description (no ``flag`` keywords: not a flag)."""
    metadata = {"flag": Flag(**flag)} if flag else {}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def parse_bool(text: str) -> bool:
    """Triton's boolean flag values: true/false, 1/0, yes/no, on/off."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _cpu_list(text: str) -> list[int]:
    from tensorwire.server.affinity import parse_cpu_list

    return parse_cpu_list(text) if text else []


def _trt_cache_default() -> Path:
    return Path(os.environ.get("TENSORWIRE_TRT_CACHE", "") or Path.home() / ".cache" / "tensorwire" / "trt")


@dataclass
class ServerSettings:
    # -- where and how it listens -------------------------------------------------------------------------
    model_repository: Path = setting(
        Path("model_repository"), help="Triton-layout model repository to serve", metavar="DIR", parse=Path)
    host: str = setting(
        "0.0.0.0", help="address to listen on; 0.0.0.0 is every interface, as containers need (docs/security.md)")
    grpc_port: int = setting(8001, help="gRPC port; 0 picks a free one (see --port-file)")
    port_file: Path | None = setting(
        None, help="write the bound port to this file once listening", metavar="FILE", parse=Path, shown="none")
    workers: int = setting(
        1, help="server processes sharing the port via SO_REUSEPORT, each with its own sessions")
    # -- HTTP/REST: KServe v2 with Triton's extensions (docs/http.md) --------------------------------------
    allow_http: bool = setting(
        True, optional_bool=True, help="serve the KServe v2 HTTP/REST protocol (Triton's binary tensor data "
        "extension included) beside gRPC")
    http_port: int = setting(8000, help="HTTP port; 0 picks a free one (see --http-port-file)")
    http_address: str = setting("", shown="--host", metavar="ADDRESS", help="address the HTTP endpoint listens on")
    http_port_file: Path | None = setting(
        None, parse=Path, metavar="FILE", shown="none", help="write the bound HTTP port to this file once listening")
    http_thread_count: int = setting(
        8, help="threads that run HTTP requests' work (decoding, ONNX Runtime, encoding); the event loop that "
        "reads and writes the sockets never runs a model")
    http_restricted_api: list[str] = setting(
        factory=list, repeat=True, metavar="APIS:KEY=VALUE", shown="none",
        help="HTTP endpoints in these categories (as --grpc-restricted-protocol's) must carry the header KEY: "
        "VALUE, else 403 (repeatable; a category in one group at most)")
    http_use_ssl: bool = setting(
        False, optional_bool=True,
        help="serve HTTP over TLS with the certificate and key of --grpc-server-cert and --grpc-server-key")
    http_use_ssl_mutual: bool = setting(
        False, optional_bool=True,
        help="mutual TLS on HTTP: clients must present a certificate signed by --grpc-root-cert (implies TLS)")
    http_header_timeout: float = setting(
        10.0, metavar="SECONDS", help="seconds a client has to send a request's line and headers; a slower one is "
        "closed (slowloris)")
    http_body_timeout: float = setting(
        30.0, metavar="SECONDS", help="most seconds between two parts of a request's body; a stalled one is "
        "answered 408 and closed")
    http_keepalive_timeout: float = setting(
        60.0, metavar="SECONDS", help="seconds an idle keep-alive HTTP connection stays open")
    http_max_header_kb: int = setting(
        64, metavar="KIB", help="largest request line and headers of one HTTP request, in KiB (431 beyond)")
    http_max_headers: int = setting(100, help="most header fields one HTTP request may carry (431 beyond)")
    # -- model control (docs/security.md) -----------------------------------------------------------------
    model_control_mode: str = setting(
        "none", choices=MODEL_CONTROL_MODES,
        help="none: every model loads at start, load/unload RPCs are refused; explicit: only --load-model "
        "models load at start and load/unload RPCs work; poll: every model loads at start and the repository is "
        "rescanned every --repository-poll-secs (new models load, removed ones unload, changed ones reload; "
        "load/unload RPCs are refused; docs/operations.md)")
    repository_poll_secs: float = setting(
        15.0, metavar="SECONDS",
        help="with --model-control-mode poll: seconds between repository scans; a change loads once it has "
        "stayed the same for one scan")
    load_models: list[str] = setting(
        factory=list, name="--load-model", metavar="NAME", repeat=True, shown="none",
        help="with --model-control-mode explicit: load this model at start (repeatable; * for all)")
    exit_on_error: bool = setting(
        True, negate="--no-exit-on-error",
        help="exit when a model fails to load at start in mode none (Triton's --exit-on-error); off: serve the others")
    strict_readiness: bool = setting(
        True, negate="--no-strict-readiness",
        help="ServerReady is false while a model asked for at start is not loaded")
    # -- TLS and restricted APIs (docs/security.md) -------------------------------------------------------
    grpc_use_ssl: bool = setting(
        False, optional_bool=True, help="serve gRPC over TLS (needs --grpc-server-cert and --grpc-server-key)")
    grpc_use_ssl_mutual: bool = setting(
        False, optional_bool=True,
        help="mutual TLS: clients must present a certificate signed by --grpc-root-cert (implies TLS)")
    grpc_server_cert: Path | None = setting(
        None, parse=Path, metavar="FILE", shown="none", help="PEM certificate chain of the server")
    grpc_server_key: Path | None = setting(
        None, parse=Path, metavar="FILE", shown="none", help="PEM private key of the server")
    grpc_root_cert: Path | None = setting(
        None, parse=Path, metavar="FILE", shown="none",
        help="PEM root certificate(s) that client certificates must chain to")
    grpc_restricted_protocol: list[str] = setting(
        factory=list, repeat=True, metavar="PROTOCOLS:KEY=VALUE", shown="none",
        help="calls in these categories (comma-separated: health, metadata, inference, shared-memory, model-config, "
        "model-repository, statistics, trace, logging) must carry the header triton-grpc-protocol-KEY: VALUE "
        "(repeatable; a category in one group at most)")
    # -- limits on what a model config may ask for, from disk or over RPC (docs/security.md) -------------
    limit_instance_count: int = setting(
        64, help="most instances (ORT sessions) one model version may ask for in instance_group")
    limit_thread_count: int = setting(
        256, help="most intra-op or inter-op threads a config parameter may ask for")
    limit_load_threads: int = setting(
        1024, help="most ONNX Runtime threads one load may create: versions x instances x (intra-op + inter-op "
        "threads per session)")
    limit_max_batch_size: int = setting(4096, help="largest max_batch_size (and preferred_batch_size) a config may set")
    limit_queue_delay_us: int = setting(
        10_000_000, help="largest dynamic_batching.max_queue_delay_microseconds a config may set")
    limit_queue_size: int = setting(
        65_536, help="largest dynamic_batching default_queue_policy.max_queue_size a config may set")
    limit_warmup_mb: float = setting(
        256.0, help="largest total size, in MiB, of the model_warmup inputs a config may describe")
    # -- system shared memory (Triton's extension; docs/shared-memory.md) ---------------------------------
    allow_shared_memory: bool = setting(
        False, optional_bool=True,
        help="serve Triton's system shared-memory extension: clients on this host register POSIX shared-memory "
        "objects (/dev/shm) and pass tensors through them instead of the socket; needs --workers 1")
    shared_memory_require_token: bool = setting(
        False, optional_bool=True,
        help="a region is usable only by calls that carry the header tensorwire-shm-token with the value its "
        "registration carried; without it, whoever reaches the port reads, writes, lists and unregisters every "
        "region (docs/shared-memory.md)")
    limit_shared_memory_regions: int = setting(
        64, help="most system shared-memory regions registered at once (each holds one file descriptor and one "
        "mapping)")
    limit_shared_memory_mb: float = setting(
        1024.0, help="most MiB registered (and mapped) as system shared-memory regions, all regions together")
    # -- requests and threads ------------------------------------------------------------------------------
    max_message_mb: float = setting(
        64.0, help="largest request and response in MiB (the default fits a batch of 64 3x224x224 FP32 images)")
    max_bytes_elements: int = setting(
        1 << 16, help="most BYTES (string) elements one input may carry; each costs ~300 bytes of Python objects "
        "and ONNX Runtime strings whatever its length, so this bounds a request's memory (docs/resilience.md)")
    max_typed_contents_mb: float = setting(
        16.0, help="largest typed contents (InferTensorContents) of one request, all inputs, once decoded, in MiB; a "
        "one-byte varint decodes to up to 8 bytes, so this bounds what typed requests cost; raw inputs are views")
    scratch_pool_mb: float = setting(
        0.0, metavar="MIB", shown="0: twice --max-message-mb",
        help="most MiB of reusable scratch buffers (realigned inputs, inputs read from shared memory) the server "
        "keeps; a request beyond it gets a buffer of its own, and buffers idle for 2 s are given back "
        "(docs/resilience.md)")
    grpc_frontend: str = setting(
        "core", choices=GRPC_FRONTENDS,
        help="the gRPC server: core, a serving loop on grpcio's C-core whose poller threads carry each call from "
        "its start to its answer (falls back to grpcio, with a log line, where this grpcio lacks what it uses); "
        "grpcio, grpcio's own server with a handler thread pool (docs/serving.md)")
    handler_threads: int = setting(
        0, shown="0: as many as --max-concurrent-rpcs",
        help="requests worked on at once. With --grpc-frontend core: the poller threads that may run a model (a "
        "request beyond them, or beyond what its model's instances can run, waits parked, holding no thread; a "
        "request in a dynamic batcher's queue, a call waiting for its request or an idle stream holds none "
        "either). With grpcio: handler threads, each "
        "held by a call from its start, also while its client is still sending, its stream is idle or it waits "
        "in a batcher queue; with one per admitted call, stalled clients never starve the others "
        "(docs/resilience.md)")
    max_concurrent_rpcs: int = setting(
        1024, help="RPCs admitted at once, counted from the moment a call starts (stalled ones too); more are "
        "answered RESOURCE_EXHAUSTED")
    # -- connections (Triton's flag names and units where Triton has them; docs/resilience.md) ----------------
    grpc_max_concurrent_streams: int = setting(
        128, help="calls one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): what one "
        "stalled connection can take from the admission bound")
    grpc_keepalive_time: int = setting(
        7_200_000, metavar="MS", help="milliseconds between keepalive pings the server sends on a connection")
    grpc_keepalive_timeout: int = setting(
        20_000, metavar="MS", help="milliseconds to wait for a keepalive ping's answer before closing the connection")
    grpc_keepalive_permit_without_calls: bool = setting(
        False, optional_bool=True, help="allow keepalive pings on connections with no call in flight")
    grpc_http2_max_pings_without_data: int = setting(
        2, help="pings the server sends without data before it stops pinging (0: no limit)")
    grpc_http2_min_recv_ping_interval_without_data: int = setting(
        300_000, metavar="MS", help="least milliseconds between a client's pings without data; faster ones are strikes")
    grpc_http2_max_ping_strikes: int = setting(
        2, help="bad pings tolerated before the connection is closed (0: no limit)")
    grpc_max_connection_age: int = setting(
        0, metavar="MS", shown="0: no limit",
        help="milliseconds after which a connection is asked to close (GOAWAY); clients reconnect, which also "
        "spreads them over replicas behind a load balancer")
    grpc_max_connection_age_grace: int = setting(
        0, metavar="MS", shown="0: no limit",
        help="milliseconds a connection past its age gets to finish its calls before it is closed, stalled calls "
        "included")
    grpc_max_connection_idle: int = setting(
        0, metavar="MS", shown="0: no limit", help="milliseconds a connection without calls stays open")
    max_queue_size: int = setting(
        1024, help="requests a dynamic batcher queues before RESOURCE_EXHAUSTED, unless the model's config sets "
        "dynamic_batching.default_queue_policy.max_queue_size")
    fastpath: str = setting(
        "", choices=CODEC_CHOICES, shown="auto, or TENSORWIRE_FASTPATH",
        help="wire codec: the Cython extension (ext), its pure-Python twin, or auto (the extension when built)")
    default_max_batch_size: int = setting(
        4, help="max_batch_size for models without one in config.pbtxt whose graph has a dynamic batch dim")
    # -- ONNX Runtime --------------------------------------------------------------------------------------
    providers: list[str] = setting(
        factory=list, parse=_comma_list, metavar="LIST",
        shown="each model's config, else tensorrt,cuda,cpu as available",
        help="execution providers to try, in order, overriding the model configs (e.g. tensorrt,cuda,cpu)")
    intra_op_threads: int = setting(
        0, help="ORT intra-op threads per session (0: cores / instances / workers, or 1 for a small model timed "
        "faster on one at load)")
    inter_op_threads: int = setting(0, help="ORT inter-op threads per session (0: ONNX Runtime's choice)")
    intra_op_spinning: bool = setting(
        False, optional_bool=True,
        help="ORT's intra-op pool threads spin-wait between runs instead of sleeping: a shorter p50 at low "
        "concurrency, paid in CPU per request (more so when idle between requests); a session with one "
        "intra-op thread has no pool threads, and nothing changes. Off by default, the one setting measured "
        "to lose to no peer at either point (docs/serving.md); a model's allow_spinning parameter overrides it")
    trt_cache_dir: Path = setting(
        factory=_trt_cache_default, parse=Path, metavar="DIR", shown="TENSORWIRE_TRT_CACHE or ~/.cache/tensorwire/trt",
        help="where TensorRT keeps its engine cache")
    # -- the process ---------------------------------------------------------------------------------------
    cpu_affinity: list[int] = setting(
        factory=list, parse=_cpu_list, metavar="CPUS", shown="no pinning",
        help="pin the server to these CPUs, e.g. 1 or 0,2-3 (with --workers, each worker gets its own slice)")
    malloc_tuning: bool = setting(
        True, negate="--no-malloc-tuning",
        help="raise glibc malloc's mmap/trim thresholds so large requests reuse memory instead of page-faulting it in")
    shutdown_grace_s: float = setting(
        10.0, name="--shutdown-grace", metavar="SECONDS", help="seconds in-flight requests get after SIGTERM/SIGINT")
    log_level: str = setting("INFO", parse=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                             help="log level")
    log_format: str = setting(
        "default", choices=LOG_FORMATS,
        help="log line format: default (local time), ISO8601 (UTC, as Triton's), json (one object per line, with "
        "each lifecycle event's fields)")
    log_requests: float = setting(
        0.0, metavar="RATE",
        help="write this share of requests (0 to 1; 1: every one) to the access log: model, version, status, "
        "latency, request id (0: off)")
    # -- metrics (docs/operations.md) ---------------------------------------------------------------------
    allow_metrics: bool = setting(
        True, optional_bool=True,
        help="serve Prometheus metrics over plaintext, unauthenticated HTTP at /metrics (Triton's names)")
    metrics_port: int = setting(8002, help="metrics HTTP port; 0 picks a free one (see --metrics-port-file)")
    metrics_address: str = setting(
        "", shown="--host", metavar="ADDRESS", help="address the metrics endpoint listens on")
    metrics_interval_ms: int = setting(
        1000, metavar="MS", help="the metrics page is rebuilt at most once per this many milliseconds however many "
        "scrapers ask (Triton's flag; with --workers N the parent reads the workers as often); 0: on every scrape")
    metrics_port_file: Path | None = setting(
        None, parse=Path, metavar="FILE", shown="none", help="write the bound metrics port to this file once listening")
    # -- not flags: set by the worker supervisor --------------------------------------------------------
    # Cores this process's sessions share when the count is not set (0: its affinity mask). Worker
    # processes that share their CPUs get their part here, which leaves the load-time choice open.
    session_cpus: int = 0
    # Set on worker processes: bind the port with SO_REUSEPORT alongside the other workers.
    reuse_port: bool = False

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 2**20)

    @property
    def scratch_pool_bytes(self) -> int:
        return int((self.scratch_pool_mb or 2 * self.max_message_mb) * 2**20)

    @property
    def handler_thread_count(self) -> int:
        return self.handler_threads or self.max_concurrent_rpcs

    @property
    def tls(self) -> bool:
        return self.grpc_use_ssl or self.grpc_use_ssl_mutual

    @property
    def http_tls(self) -> bool:
        return self.http_use_ssl or self.http_use_ssl_mutual

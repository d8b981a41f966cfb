"""`tensorwire serve`'s flags, derived from ``ServerSettings`` (the one place their defaults live).

``add_arguments`` turns each field that carries a :class:`~tensorwire.server.settings.Flag` into an
argparse argument whose help ends with its default; ``settings_from_args`` builds the settings back and
``check_settings`` refuses combinations that cannot work, before anything starts.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from tensorwire.errors import SettingsError
from tensorwire.server.settings import Flag, ServerSettings, parse_bool


def _flag_fields() -> list[tuple[dataclasses.Field, Flag]]:
    return [(f, f.metadata["flag"]) for f in dataclasses.fields(ServerSettings) if "flag" in f.metadata]


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def _shown(f: dataclasses.Field, flag: Flag) -> str:
    if flag.shown:
        return flag.shown
    default = _default(f)
    if isinstance(default, bool):
        return "on" if default else "off"
    return str(default)


def _names(f: dataclasses.Field, flag: Flag) -> list[str]:
    if flag.negate:
        return [flag.negate]
    return [flag.name or "--" + f.name.replace("_", "-"), *flag.aliases]


def _argument_kwargs(f: dataclasses.Field, flag: Flag) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dest": f.name, "help": f"{flag.help} (default: {_shown(f, flag)})"}
    default = _default(f)
    if flag.negate:
        kwargs["help"] = f"turn off what is on by default: {flag.help}"
        return {**kwargs, "action": "store_false", "default": default}
    if flag.optional_bool:
        return {**kwargs, "nargs": "?", "const": True, "type": _argparse_type(parse_bool), "default": default,
                "metavar": "BOOL"}
    if isinstance(default, bool):
        return {**kwargs, "action": "store_true", "default": default}
    kwargs["metavar"] = flag.metavar or {int: "N", float: "NUM"}.get(type(default))
    if flag.choices:
        kwargs["choices"] = [c for c in flag.choices if c]
    if flag.repeat:
        return {**kwargs, "action": "append", "default": None}
    parse = flag.parse or (type(default) if default is not None else str)
    return {**kwargs, "type": _argparse_type(parse), "default": default}


def _argparse_type(parse):
    """``parse`` with its ValueError message shown by argparse (which otherwise says only 'invalid value')."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One argument per flag field of ``ServerSettings``."""
    for f, flag in _flag_fields():
        parser.add_argument(*_names(f, flag), **_argument_kwargs(f, flag))


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The settings the parsed flags describe (repeatable flags never given: empty lists)."""
    values = {}
    for f, flag in _flag_fields():
        value = getattr(args, f.name)
        values[f.name] = [] if flag.repeat and value is None else value
    settings = ServerSettings(**values)
    check_settings(settings)
    return settings


def check_settings(s: ServerSettings) -> None:
    """Refuse settings that cannot work together, with the flag to change; nothing has started yet."""
    if s.repository_poll_secs <= 0:
        raise SettingsError(f"--repository-poll-secs must be positive, got {s.repository_poll_secs}")
    if not 0.0 <= s.log_requests <= 1.0:
        raise SettingsError(f"--log-requests is a share of requests from 0 to 1, got {s.log_requests}")
    if not 0 <= s.metrics_port <= 65535:
        raise SettingsError(f"--metrics-port must be a port number (0 for any free one), got {s.metrics_port}")
    if s.allow_metrics and s.metrics_port and s.metrics_port == s.grpc_port and (
            (s.metrics_address or s.host) == s.host):
        raise SettingsError(f"--metrics-port {s.metrics_port} is also --grpc-port; give them different ports")
    if s.load_models and s.model_control_mode != "explicit":
        raise SettingsError("--load-model needs --model-control-mode explicit: in mode none every model of the "
                            "repository loads at start and none can be loaded later")
    if s.model_control_mode == "explicit" and s.workers > 1:
        raise SettingsError(
            f"--model-control-mode explicit cannot be used with --workers {s.workers}: a load or unload RPC reaches "
            "only the worker its connection landed on, so workers would serve different models; use one worker, "
            "or mode none with the models in the repository")
    if s.allow_shared_memory and s.workers > 1:
        raise SettingsError(
            f"--allow-shared-memory cannot be used with --workers {s.workers}: shared-memory registrations live in "
            "one process and the kernel spreads a client's connections over the workers, so a request could reach "
            "a worker that never saw its region's registration; use one worker (docs/shared-memory.md)")
    if s.workers < 1:
        raise SettingsError(f"--workers must be at least 1, got {s.workers}")
    for name in ("limit_instance_count", "limit_thread_count", "limit_load_threads", "limit_max_batch_size",
                 "limit_queue_size", "limit_queue_delay_us", "limit_warmup_mb", "max_message_mb", "max_concurrent_rpcs",
                 "grpc_max_concurrent_streams", "max_bytes_elements", "max_typed_contents_mb",
                 "limit_shared_memory_regions", "limit_shared_memory_mb"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"--{name.replace('_', '-')} must be positive, got {getattr(s, name)}")
    if s.metrics_interval_ms < 0:
        raise SettingsError(f"--metrics-interval-ms must be 0 or more, got {s.metrics_interval_ms}")
    if s.handler_threads < 0:
        raise SettingsError(f"--handler-threads must be 0 (one per admitted call) or more, got {s.handler_threads}")
    from tensorwire.server.affinity import check_cpus
    from tensorwire.server.security import check_restricted_protocols, check_tls_settings

    try:
        check_cpus(s.cpu_affinity)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    check_tls_settings(s)
    check_restricted_protocols(s.grpc_restricted_protocol)
    check_http_settings(s)


def check_http_settings(s: ServerSettings) -> None:
    """The HTTP endpoint's flags: ports, bounds, and the same locks as gRPC (security.py)."""
    from tensorwire.server.security import check_http_locked_like_grpc

    if not s.allow_http:
        return
    if not 0 <= s.http_port <= 65535:
        raise SettingsError(f"--http-port must be a port number (0 for any free one), got {s.http_port}")
    address = s.http_address or s.host
    if s.http_port and s.http_port == s.grpc_port and address == s.host:
        raise SettingsError(f"--http-port {s.http_port} is also --grpc-port; give them different ports")
    if s.allow_metrics and s.http_port and s.http_port == s.metrics_port and address == (s.metrics_address or s.host):
        raise SettingsError(f"--http-port {s.http_port} is also --metrics-port; give them different ports")
    for name in ("http_thread_count", "http_header_timeout", "http_body_timeout", "http_keepalive_timeout",
                 "http_max_header_kb", "http_max_headers"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"--{name.replace('_', '-')} must be positive, got {getattr(s, name)}")
    check_http_locked_like_grpc(s)

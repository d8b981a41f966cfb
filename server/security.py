"""Who may reach what: TLS / mutual TLS credentials and Triton's restricted protocol categories.

Both follow Triton's flags and wording so deployment scripts and ``tritonclient`` work unchanged:
``--grpc-use-ssl``, ``--grpc-use-ssl-mutual``, ``--grpc-server-cert``, ``--grpc-server-key``,
``--grpc-root-cert``; ``--grpc-restricted-protocol=<protocol>[,<protocol>...]:<key>=<value>``, whose
calls must carry the header ``triton-grpc-protocol-<key>: <value>``. On grpcio's server the restriction is
an interceptor, installed only when a restriction is configured, so an unrestricted server pays nothing; the
C-core serving loop looks the method up in :func:`restriction_table` at call start.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

import grpc

from tensorwire.errors import SettingsError
from tensorwire.server.settings import ServerSettings

HEADER_PREFIX = "triton-grpc-protocol-"
_SERVICE = "/inference.GRPCInferenceService/"

# Triton's categories and the RPCs in each. grpc.health.v1 (what Kubernetes' native probes call) is
# "health"; server reflection describes the API, so it is "metadata".
CATEGORIES: dict[str, tuple[str, ...]] = {
    "health": (_SERVICE + "ServerLive", _SERVICE + "ServerReady", _SERVICE + "ModelReady",
               "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"),
    "metadata": (_SERVICE + "ServerMetadata", _SERVICE + "ModelMetadata",
                 "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                 "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
    "inference": (_SERVICE + "ModelInfer", _SERVICE + "ModelStreamInfer"),
    "shared-memory": tuple(_SERVICE + m for m in (
        "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
        "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister")),
    "model-config": (_SERVICE + "ModelConfig",),
    "model-repository": (_SERVICE + "RepositoryIndex", _SERVICE + "RepositoryModelLoad",
                         _SERVICE + "RepositoryModelUnload"),
    "statistics": (_SERVICE + "ModelStatistics",),
    "trace": (_SERVICE + "TraceSetting",),
    "logging": (_SERVICE + "LogSettings",),
}


# -- TLS --------------------------------------------------------------------------------------------------
def _read(path: Path | None, flag: str) -> bytes:
    if path is None:
        raise SettingsError(f"TLS needs {flag}")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{flag} {path}: cannot be read ({exc.strerror})") from None


def _load_certificates(data: bytes, path: Path, flag: str) -> list:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise SettingsError(f"{flag} {path}: not a PEM certificate")
    return certs


def _load_key(data: bytes, path: Path):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"--grpc-server-key {path}: not an unencrypted PEM private key ({exc})") from None


def _public_bytes(key) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def check_tls_settings(s: ServerSettings) -> None:
    """Every TLS file readable and well-formed, the key the certificate's, before the server starts."""
    if not (s.tls or s.http_tls):
        for flag, value in (("--grpc-server-cert", s.grpc_server_cert), ("--grpc-server-key", s.grpc_server_key)):
            if value is not None:
                raise SettingsError(f"{flag} is set but TLS is off: add --grpc-use-ssl (or --grpc-use-ssl-mutual, "
                                    "--http-use-ssl)")
        return
    cert_pem = _read(s.grpc_server_cert, "--grpc-server-cert")
    key_pem = _read(s.grpc_server_key, "--grpc-server-key")
    cert = _load_certificates(cert_pem, s.grpc_server_cert, "--grpc-server-cert")[0]
    key = _load_key(key_pem, s.grpc_server_key)
    if _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
        raise SettingsError(f"--grpc-server-key {s.grpc_server_key} is not the key of the certificate in "
                            f"--grpc-server-cert {s.grpc_server_cert}")
    if s.grpc_use_ssl_mutual or s.http_use_ssl_mutual:
        root = _read(s.grpc_root_cert, "--grpc-root-cert")
        _load_certificates(root, s.grpc_root_cert, "--grpc-root-cert")


def server_credentials(s: ServerSettings) -> grpc.ServerCredentials:
    """grpcio credentials for the TLS settings (checked by :func:`check_tls_settings`)."""
    pair = (Path(s.grpc_server_key).read_bytes(), Path(s.grpc_server_cert).read_bytes())
    if s.grpc_use_ssl_mutual:
        return grpc.ssl_server_credentials([pair], root_certificates=Path(s.grpc_root_cert).read_bytes(),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials([pair])


# -- restricted protocols ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Restriction:
    """Calls in ``categories`` must carry ``header: value``."""

    categories: tuple[str, ...]
    header: str
    value: bytes

    def allows(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == self.header:
                given = value if isinstance(value, bytes) else value.encode()
                return hmac.compare_digest(given, self.value)  # constant time: no key leaks by timing
        return False


def parse_restriction(text: str, flag: str = "--grpc-restricted-protocol", prefix: str = HEADER_PREFIX) -> Restriction:
    """``<protocol>[,<protocol>...]:<key>=<value>``, as Triton's --grpc-restricted-protocol (and, with
    ``prefix`` "", its --http-restricted-api, whose header is the key itself)."""
    protocols, sep, pair = text.partition(":")
    key, eq, value = pair.partition("=")
    if not sep or not eq or not key.strip() or not protocols.strip():
        raise SettingsError(f"{flag} {text!r}: expected <protocol>[,<protocol>...]:<key>=<value>")
    categories = tuple(p.strip() for p in protocols.split(",") if p.strip())
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise SettingsError(f"{flag} {text!r}: unknown protocol(s) {', '.join(unknown)}; "
                            f"known: {', '.join(CATEGORIES)}")
    return Restriction(categories, prefix + key.strip().lower(), value.encode())


def check_restricted_protocols(texts: list[str], flag: str = "--grpc-restricted-protocol",
                               prefix: str = HEADER_PREFIX) -> list[Restriction]:
    """Parse every group; a protocol may be in one group only."""
    restrictions = [parse_restriction(t, flag, prefix) for t in texts]
    seen: dict[str, str] = {}
    for r in restrictions:
        for c in r.categories:
            if c in seen:
                raise SettingsError(f"{flag}: protocol '{c}' is in two groups "
                                    f"(headers {seen[c]} and {r.header}); give each protocol once")
            seen[c] = r.header
    return restrictions


def refusal_details(header: str) -> str:
    """The UNAVAILABLE details of a call refused for lacking ``header`` (Triton's words)."""
    return f"This protocol is restricted, expecting header '{header}'"


def restriction_table(s: ServerSettings) -> dict[str, Restriction]:
    """Method path -> the restriction it falls under, for the methods of every restricted category."""
    return {m: r for r in check_restricted_protocols(s.grpc_restricted_protocol)
            for c in r.categories for m in CATEGORIES[c]}


def _refusal(handler: grpc.RpcMethodHandler | None, header: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers UNAVAILABLE without running anything."""
    message = refusal_details(header)

    def refuse(_request, context):
        context.abort(grpc.StatusCode.UNAVAILABLE, message)

    if handler is not None and handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler is not None and handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class RestrictedProtocols(grpc.ServerInterceptor):
    """Refuses calls in a restricted category that lack their group's header."""

    def __init__(self, by_method: dict[str, Restriction]) -> None:
        self._by_method = by_method

    def intercept_service(self, continuation, handler_call_details):
        rule = self._by_method.get(handler_call_details.method)
        if rule is None or rule.allows(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        return _refusal(continuation(handler_call_details), rule.header)


def interceptors(s: ServerSettings) -> list[grpc.ServerInterceptor]:
    by_method = restriction_table(s)
    return [RestrictedProtocols(by_method)] if by_method else []


def check_http_locked_like_grpc(s: ServerSettings) -> None:
    """HTTP is never the open side door of a locked gRPC port: with gRPC behind TLS, mutual TLS or restricted
    categories, HTTP must have the same lock (or be off), else the server refuses to start and names the flags."""
    if not s.allow_http:
        return
    missing = []
    if s.tls and not s.http_tls:
        missing.append("--http-use-ssl (gRPC has --grpc-use-ssl)")
    if s.grpc_use_ssl_mutual and not s.http_use_ssl_mutual:
        missing.append("--http-use-ssl-mutual (gRPC has --grpc-use-ssl-mutual)")
    grpc_locked = {c for r in check_restricted_protocols(s.grpc_restricted_protocol) for c in r.categories}
    http_locked = {c for r in check_restricted_protocols(s.http_restricted_api, "--http-restricted-api", "")
                   for c in r.categories}
    open_on_http = sorted(grpc_locked - http_locked)
    if open_on_http:
        missing.append(f"--http-restricted-api for {', '.join(open_on_http)} (restricted on gRPC by "
                       "--grpc-restricted-protocol)")
    if missing:
        raise SettingsError("HTTP would serve without the protection gRPC has: add " + "; ".join(missing)
                            + ", or turn HTTP off with --allow-http=false (docs/http.md)")


def loopback_only(host: str) -> bool:
    """Whether ``host`` is reachable from this machine alone."""
    return host in ("localhost", "::1", "[::1]") or host.startswith("127.")

"""Transport security and authentication for the gRPC services and their clients.

- **TLS**: a server with ``tls_cert`` + ``tls_key`` serves over TLS; with ``tls_client_ca`` as well
  it requires a client certificate signed by that CA (mTLS). Clients trust ``tls_ca`` (and present
  ``tls_client_cert`` / ``tls_client_key`` for mTLS).
- **Bearer token**: with ``auth_token`` set, calls that change state (``AddItems``, ``Rebalance``)
  — or every call when ``auth_all`` — need the metadata ``authorization: Bearer <token>``.
  Missing → UNAUTHENTICATED, wrong → PERMISSION_DENIED; the servicer is never reached.
  Health checks stay open so load balancers / orchestrators can probe.
- **No plaintext off loopback**: a server bound to anything but 127.0.0.1 / localhost / ::1
  refuses to start without TLS unless ``allow_insecure`` (``genrec serve --insecure``).

Each setting comes from the ``serving:`` params or, when set (non-empty), its environment
variable, which wins (keep secrets out of params.yaml): see :data:`ENV`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("genrec.serving")

#: field -> environment variable
ENV = {
    "tls_cert": "GENREC_TLS_CERT",
    "tls_key": "GENREC_TLS_KEY",
    "tls_client_ca": "GENREC_TLS_CLIENT_CA",
    "tls_ca": "GENREC_TLS_CA",
    "tls_client_cert": "GENREC_TLS_CLIENT_CERT",
    "tls_client_key": "GENREC_TLS_CLIENT_KEY",
    "auth_token": "GENREC_AUTH_TOKEN",
    "auth_all": "GENREC_AUTH_ALL",
    "allow_insecure": "GENREC_ALLOW_INSECURE",
}

#: full method names that change state: they need the token whenever one is configured
STATEFUL_METHODS = frozenset({"/genrec.v1.Tokenizer/AddItems", "/genrec.v1.Rebalancer/Rebalance"})
#: never need a token (liveness / readiness probes)
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}


class SecurityError(ValueError):
    """Refusing an unsafe or inconsistent security configuration."""


def _truthy(v: str) -> bool:
    return v.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Security:
    tls_cert: str | None = None  # server certificate chain (PEM file)
    tls_key: str | None = None  # server private key (PEM file)
    tls_client_ca: str | None = None  # server: CA that client certificates must chain to (mTLS)
    tls_ca: str | None = None  # client: CA that the server certificate must chain to
    tls_client_cert: str | None = None  # client certificate (mTLS)
    tls_client_key: str | None = None  # client private key (mTLS)
    auth_token: str | None = None
    auth_all: bool = False
    allow_insecure: bool = False

    @classmethod
    def resolve(cls, params: Any = None, env: dict[str, str] | None = None, **overrides) -> Security:
        """Params (any object with the field names as attributes, e.g. ``ServingParams``), then the
        environment (non-empty values win), then ``overrides`` that are not None."""
        env = os.environ if env is None else env
        vals: dict[str, Any] = {}
        for f in fields(cls):
            v = getattr(params, f.name, None) if params is not None else None
            e = env.get(ENV[f.name], "")
            if e.strip():
                v = _truthy(e) if f.type in ("bool", bool) else e
            if overrides.get(f.name) is not None:
                v = overrides[f.name]
            vals[f.name] = f.default if v is None else v
        for k in ("tls_cert", "tls_key", "tls_client_ca", "tls_ca", "tls_client_cert", "tls_client_key", "auth_token"):
            if vals[k] == "":
                vals[k] = None
        return cls(**vals)

    @property
    def server_tls(self) -> bool:
        return bool(self.tls_cert or self.tls_key)

    @property
    def client_tls(self) -> bool:
        return bool(self.tls_ca or self.tls_client_cert)

    def with_(self, **kw) -> Security:
        return replace(self, **kw)

    # -- server side ------------------------------------------------------------------------

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.server_tls:
            if self.tls_client_ca:
                raise SecurityError("serving.tls_client_ca (mTLS) needs serving.tls_cert and serving.tls_key")
            return None
        if not (self.tls_cert and self.tls_key):
            raise SecurityError("TLS needs both serving.tls_cert and serving.tls_key")
        ca = _read(self.tls_client_ca, "tls_client_ca") if self.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(_read(self.tls_key, "tls_key"), _read(self.tls_cert, "tls_cert"))],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        if self.auth_all and not self.auth_token:
            raise SecurityError("serving.auth_all needs a token (serving.auth_token or GENREC_AUTH_TOKEN)")
        return [BearerAuthInterceptor(self.auth_token, self.auth_all)] if self.auth_token else []

    def check_server(self, host: str) -> grpc.ServerCredentials | None:
        """Validate the server settings for ``host``: the TLS credentials (None = plaintext), or
        :class:`SecurityError` (unreadable / half TLS settings, ``auth_all`` without a token,
        plaintext on a non-loopback address without ``allow_insecure``)."""
        creds = self.server_credentials()
        self.interceptors()
        if creds is None and not is_loopback(host) and not self.allow_insecure:
            raise SecurityError(
                f"refusing to serve plaintext gRPC on non-loopback address {host!r}: configure TLS "
                "(serving.tls_cert / serving.tls_key or GENREC_TLS_CERT / GENREC_TLS_KEY) or pass --insecure "
                "(serving.allow_insecure: true)"
            )
        return creds

    def bind(self, server: grpc.aio.Server, host: str, port: int) -> int:
        """Add the listening port (TLS when configured) after :meth:`check_server`."""
        creds = self.check_server(host)
        addr = f"{_bracket(host)}:{port}"
        if creds is not None:
            return server.add_secure_port(addr, creds)
        if not is_loopback(host):
            log.warning("serving PLAINTEXT gRPC on %s (allow_insecure): traffic%s readable on the network",
                        host, " and the bearer token are" if self.auth_token else " is")
        return server.add_insecure_port(addr)

    # -- client side ------------------------------------------------------------------------

    def channel(self, address: str, options: Iterable[tuple[str, Any]] | None = None) -> grpc.Channel:
        opts = list(options or [])
        if self.client_tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(self.tls_ca, "tls_ca") if self.tls_ca else None,
                private_key=_read(self.tls_client_key, "tls_client_key") if self.tls_client_key else None,
                certificate_chain=_read(self.tls_client_cert, "tls_client_cert") if self.tls_client_cert else None,
            )
            return grpc.secure_channel(address, creds, options=opts)
        return grpc.insecure_channel(address, options=opts)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.auth_token}"),) if self.auth_token else ()


def _read(path: str | None, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as e:
        raise SecurityError(f"serving.{what}: cannot read {path!r}: {e.strerror or e}") from None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def is_loopback(host: str) -> bool:
    h = host.strip().strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` metadata entry; None when absent."""
    for k, v in metadata or ():
        if k.lower() == "authorization":
            v = v.decode() if isinstance(v, bytes) else str(v)
            scheme, _, tok = v.strip().partition(" ")
            return tok.strip() if scheme.lower() == "bearer" else ""
    return None


def check_token(expected: str, got: str | None) -> grpc.StatusCode | None:
    """None when ``got`` matches; else the status to answer (constant-time comparison)."""
    if not got:
        return grpc.StatusCode.UNAUTHENTICATED
    if not hmac.compare_digest(got.encode(), expected.encode()):
        return grpc.StatusCode.PERMISSION_DENIED
    return None


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Reject calls without the right bearer token before the servicer runs."""

    def __init__(self, token: str, auth_all: bool = False, stateful: Iterable[str] = STATEFUL_METHODS):
        if not token:
            raise SecurityError("empty auth token")
        self.token, self.auth_all, self.stateful = token, auth_all, frozenset(stateful)

    def _needs(self, method: str) -> bool:
        if method.startswith(OPEN_PREFIXES):
            return False
        return self.auth_all or method in self.stateful

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or not self._needs(details.method):
            return handler
        code = check_token(self.token, bearer(details.invocation_metadata))
        if code is None:
            return handler
        msg = "missing bearer token (metadata 'authorization: Bearer <token>')" if code == grpc.StatusCode.UNAUTHENTICATED else "invalid bearer token"
        log.warning("%s: %s", details.method, msg)
        return _deny(handler, code, msg)


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, msg: str) -> grpc.RpcMethodHandler:
    async def abort(_request, context):
        await context.abort(code, msg)

    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kw)
    return grpc.unary_unary_rpc_method_handler(abort, **kw)

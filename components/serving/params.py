"""``serving:`` params: request bounds, service addresses, client timeouts, TLS and auth."""

from __future__ import annotations

from pydantic import Field, field_validator

from components.params import Section

DEFAULT_PORTS = {"tokenizer": 50051, "retrieval": 50052, "rebalancer": 50053, "generator": 50054}


class ServingParams(Section):
    """How the gRPC services and the BentoML bundle answer."""

    max_history: int = Field(200, ge=1, description="most history items one request may carry")
    max_k: int = Field(100, ge=1, description="most items one request may ask for")
    max_beam: int = Field(200, ge=1, description="widest beam one request may ask for")
    max_batch: int = Field(256, ge=1, description="most requests per RecommendBatch / decoding batch")
    default_beam: int = Field(20, ge=1, description="beam when a request leaves it 0 (raised to k if smaller)")
    batch_wait_ms: float = Field(5.0, ge=0, description="generator: merge concurrent Recommend calls for up to this long into one decode (0 = off)")
    tokenizer_address: str | None = Field(None, description="host:port of the tokenizer service (live new items); null = none")
    retrieval_address: str | None = Field(None, description="host:port of the retrieval service (GenPlugin augmentation); null = none")
    client_timeout_s: float = Field(2.0, gt=0, description="deadline of each service-to-service call")
    client_retries: int = Field(2, ge=0, description="retries of a service-to-service call on UNAVAILABLE / DEADLINE_EXCEEDED")
    refresh_s: float = Field(0.0, ge=0, description="poll the tokenizer for a new codebook every N seconds; 0 = only on unknown items")
    device: str = Field("auto", description="generator inference device: auto (cuda when present) | cpu | cuda[:i]")
    tls_cert: str | None = Field(None, description="server certificate chain (PEM) → serve over TLS; env GENREC_TLS_CERT wins")
    tls_key: str | None = Field(None, description="server private key (PEM), with tls_cert; env GENREC_TLS_KEY wins")
    tls_client_ca: str | None = Field(None, description="server: CA (PEM) client certificates must chain to → mutual TLS; env GENREC_TLS_CLIENT_CA")
    tls_ca: str | None = Field(None, description="clients: CA (PEM) the services' certificates must chain to → TLS channels; env GENREC_TLS_CA")
    tls_client_cert: str | None = Field(None, description="clients: certificate (PEM) presented for mutual TLS; env GENREC_TLS_CLIENT_CERT")
    tls_client_key: str | None = Field(None, description="clients: private key (PEM) for mutual TLS; env GENREC_TLS_CLIENT_KEY")
    auth_token: str | None = Field(None, description="bearer token required for AddItems / Rebalance (and sent by clients); prefer env GENREC_AUTH_TOKEN")
    auth_all: bool = Field(False, description="require the bearer token for every call, not only state-changing ones (health checks stay open)")
    allow_insecure: bool = Field(False, description="allow plaintext gRPC on a non-loopback address (like `genrec serve --insecure`)")
    generator: str | None = Field(None, description="generator checkpoint the generator service serves; null = generator/<generator.name or <dataset>-<backbone>>@latest")
    codebook: str | None = Field(None, description="codebook the tokenizer service serves; null = the one the served generator was trained on (so live items reach it)")
    host: str = Field("127.0.0.1", description="`genrec serve all`: address every service binds")
    ports: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_PORTS),
        description="`genrec serve all`: port of each service (tokenizer, retrieval, rebalancer, generator)")

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: dict[str, int]) -> dict[str, int]:
        known = {"tokenizer", "retrieval", "rebalancer", "generator"}
        bad = sorted(set(v) - known)
        if bad:
            raise ValueError(f"unknown services {bad}; one of {sorted(known)}")
        v = {**DEFAULT_PORTS, **{k: int(x) for k, x in v.items()}}
        if any(not 0 <= x < 65536 for x in v.values()):
            raise ValueError(f"ports must be in 0..65535 (0 = any free port), got {v}")
        fixed = [x for x in v.values() if x]
        if len(set(fixed)) != len(fixed):
            raise ValueError(f"two services on one port: {v}")
        return v

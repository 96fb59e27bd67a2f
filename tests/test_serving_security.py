"""gRPC security (issue #17): TLS / mTLS with certificates made here, the bearer-token interceptor
(missing → UNAUTHENTICATED, wrong → PERMISSION_DENIED, no state change), no plaintext off
loopback without an explicit insecure flag, settings from params and the environment."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import numpy as np
import pytest

from components.rebalancer.params import RebalanceParams
from components.rebalancer.service import RebalancerService
from components.rebalancer.service import registration as rb_registration
from components.registry import Registry
from components.serving.clients import TokenizerClient
from components.serving.grpc_server import BackgroundServer
from components.serving.params import ServingParams
from components.serving.pb.genrec.v1 import rebalancer_pb2, rebalancer_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc
from components.serving.security import ENV, Security, SecurityError, bearer, check_token, is_loopback
from components.tokenizer.params import TokenizerParams
from components.tokenizer.service import TokenizerService, registration
from components.tokenizer.tokenize import build_codebook

x509 = pytest.importorskip("cryptography.x509", reason="the `cryptography` package makes the test certificates")
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TOKEN = "s3cret-token"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)


# ---- certificates ----------------------------------------------------------------------------
def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(k) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert(subject: str, key, issuer_name, issuer_key, ca: bool, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _ca(dirpath: Path, name: str):
    k = _key()
    c = _cert(name, k, None, k, ca=True)
    (dirpath / f"{name}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    return c, k


def _leaf(dirpath: Path, name: str, ca, san=None) -> tuple[str, str]:
    ca_cert, ca_key = ca
    k = _key()
    c = _cert(name, k, ca_cert.subject, ca_key, ca=False, san=san)
    (dirpath / f"{name}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    (dirpath / f"{name}.key").write_bytes(_pem_key(k))
    return str(dirpath / f"{name}.pem"), str(dirpath / f"{name}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = _ca(d, "ca")
    _ca(d, "other-ca")
    cert, key = _leaf(d, "server", ca, [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    ccert, ckey = _leaf(d, "client", ca)
    return {"ca": str(d / "ca.pem"), "other_ca": str(d / "other-ca.pem"), "cert": cert, "key": key, "client_cert": ccert, "client_key": ckey}


# ---- a tiny live tokenizer (AddItems works) ----------------------------------------------------
class _Enc:
    name = "rand-16"

    def __init__(self):
        self.cache: dict[str, np.ndarray] = {}

    def encode(self, texts):
        out = []
        for t in texts:
            if t not in self.cache:
                v = np.random.default_rng(abs(hash(t)) % (2**32)).normal(size=16).astype(np.float32)
                self.cache[t] = v / np.linalg.norm(v)
            out.append(self.cache[t])
        return np.stack(out)


def _tokenizer(tmp_path: Path) -> tuple[TokenizerService, Registry]:
    reg = Registry(tmp_path / "artifacts")
    enc, p = _Enc(), TokenizerParams(method="rqkmeans", levels=2, codebook_size=4, encoder="minilm")
    ids = [f"i{k}" for k in range(40)]
    cb = build_codebook(enc.encode([f"title {k}" for k in range(40)]), ids, p, item_counts=np.ones(40), seed=0)
    cb.stats["encoder"] = enc.name
    art = cb.save(reg, "tiny", parents=[], params={})
    return TokenizerService(reg, art.ref, p, encoder=enc, max_items=10), reg


def _add_req(k: int = 0):
    return tokenizer_pb2.AddItemsRequest(items=[tokenizer_pb2.NewItem(item_id=f"new-{k}", fields={"title": f"brand new {k}"})])


def _codebooks(reg: Registry) -> int:
    return len(list((reg.root / "codebook").rglob("manifest.json"))) if (reg.root / "codebook").exists() else 0


# ---- TLS ---------------------------------------------------------------------------------------
def _stats(channel, metadata=None, timeout=3):
    return tokenizer_pb2_grpc.TokenizerStub(channel).CodebookStats(tokenizer_pb2.CodebookStatsRequest(), timeout=timeout, metadata=metadata)


def test_tls_client_ok_plaintext_and_wrong_ca_fail(tmp_path, pki):
    service, _ = _tokenizer(tmp_path)
    with BackgroundServer([registration(service)], security=Security(tls_cert=pki["cert"], tls_key=pki["key"])) as port:
        addr = f"127.0.0.1:{port}"
        with Security(tls_ca=pki["ca"]).channel(addr) as ch:
            assert _stats(ch).codebook_ref == service.current_ref
        client = TokenizerClient(addr, retries=0, security=Security(tls_ca=pki["ca"]))  # the service-to-service client
        assert client.current_codebook_ref() == service.current_ref
        client.close()
        for ch in (grpc.insecure_channel(addr), Security(tls_ca=pki["other_ca"]).channel(addr)):
            with ch, pytest.raises(grpc.RpcError) as e:
                _stats(ch, timeout=2)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_client_certificate(tmp_path, pki):
    service, _ = _tokenizer(tmp_path)
    sec = Security(tls_cert=pki["cert"], tls_key=pki["key"], tls_client_ca=pki["ca"])
    with BackgroundServer([registration(service)], security=sec) as port:
        addr = f"127.0.0.1:{port}"
        with Security(tls_ca=pki["ca"], tls_client_cert=pki["client_cert"], tls_client_key=pki["client_key"]).channel(addr) as ch:
            assert _stats(ch).codebook_ref == service.current_ref
        with Security(tls_ca=pki["ca"]).channel(addr) as ch, pytest.raises(grpc.RpcError) as e:
            _stats(ch, timeout=2)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bad_tls_settings_refused(tmp_path, pki):
    with pytest.raises(SecurityError, match="both"):
        Security(tls_cert=pki["cert"]).check_server("127.0.0.1")
    with pytest.raises(SecurityError, match="needs serving.tls_cert"):
        Security(tls_client_ca=pki["ca"]).check_server("127.0.0.1")
    with pytest.raises(SecurityError, match="cannot read"):
        Security(tls_cert=str(tmp_path / "none.pem"), tls_key=pki["key"]).check_server("127.0.0.1")


# ---- bearer token ------------------------------------------------------------------------------
def test_token_guards_add_items_without_state_change(tmp_path):
    service, reg = _tokenizer(tmp_path)
    ref0, n0 = service.current_ref, _codebooks(reg)
    with BackgroundServer([registration(service)], security=Security(auth_token=TOKEN)) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = tokenizer_pb2_grpc.TokenizerStub(ch)
        assert stub.CodebookStats(tokenizer_pb2.CodebookStatsRequest(), timeout=5).codebook_ref == ref0  # reads stay open
        for md, code in [(None, grpc.StatusCode.UNAUTHENTICATED), ((("authorization", "Bearer nope"),), grpc.StatusCode.PERMISSION_DENIED),
                         ((("authorization", f"Basic {TOKEN}"),), grpc.StatusCode.UNAUTHENTICATED)]:
            with pytest.raises(grpc.RpcError) as e:
                stub.AddItems(_add_req(), timeout=5, metadata=md)
            assert e.value.code() == code
            assert service.current_ref == ref0 and _codebooks(reg) == n0  # nothing written, nothing swapped
        r = stub.AddItems(_add_req(), timeout=30, metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert r.codebook_ref != ref0 and service.current_ref == r.codebook_ref and _codebooks(reg) == n0 + 1


def test_token_guards_rebalance(tmp_path):
    service = RebalancerService(Registry(tmp_path / "artifacts"), RebalanceParams(n_init=1), seed=0)
    with BackgroundServer([rb_registration(service)], security=Security(auth_token=TOKEN)) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = rebalancer_pb2_grpc.RebalancerStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Rebalance(rebalancer_pb2.RebalanceRequest(codebook_ref="codebook/x"), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:  # past the interceptor: the servicer's own validation answers
            stub.Rebalance(rebalancer_pb2.RebalanceRequest(), timeout=5, metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "codebook_ref is required" in e.value.details()


def test_auth_all_guards_reads_but_not_health(tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    service, _ = _tokenizer(tmp_path)
    with BackgroundServer([registration(service)], security=Security(auth_token=TOKEN, auth_all=True)) as port:
        addr = f"127.0.0.1:{port}"
        with grpc.insecure_channel(addr) as ch:
            with pytest.raises(grpc.RpcError) as e:
                _stats(ch)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert h.status == health_pb2.HealthCheckResponse.SERVING
        client = TokenizerClient(addr, retries=0, security=Security(auth_token=TOKEN))  # sends authorization: Bearer
        assert client.current_codebook_ref() == service.current_ref
        client.close()
        wrong = TokenizerClient(addr, retries=0, security=Security(auth_token="other"))
        with pytest.raises(grpc.RpcError) as e:
            wrong.current_codebook_ref()
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        wrong.close()
    with pytest.raises(SecurityError, match="auth_all needs a token"):
        Security(auth_all=True).check_server("127.0.0.1")


def test_token_and_tls_together(tmp_path, pki):
    service, _ = _tokenizer(tmp_path)
    sec = Security(tls_cert=pki["cert"], tls_key=pki["key"], auth_token=TOKEN)
    with BackgroundServer([registration(service)], security=sec) as port, \
            Security(tls_ca=pki["ca"], auth_token=TOKEN).channel(f"127.0.0.1:{port}") as ch:
        stub = tokenizer_pb2_grpc.TokenizerStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.AddItems(_add_req(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        r = stub.AddItems(_add_req(1), timeout=30, metadata=Security(auth_token=TOKEN).metadata())
        assert service.current_ref == r.codebook_ref


def test_bearer_parsing_and_constant_time_check():
    assert bearer([("authorization", "Bearer abc")]) == "abc" and bearer([("Authorization", b"bearer  abc ")]) == "abc"
    assert bearer([("x", "y")]) is None and bearer(None) is None and bearer([("authorization", "Basic abc")]) == ""
    assert check_token("abc", "abc") is None
    assert check_token("abc", None) == grpc.StatusCode.UNAUTHENTICATED and check_token("abc", "") == grpc.StatusCode.UNAUTHENTICATED
    assert check_token("abc", "abd") == grpc.StatusCode.PERMISSION_DENIED


# ---- plaintext off loopback ------------------------------------------------------------------------
@pytest.mark.parametrize("host, ok", [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True), ("127.1.2.3", True),
                                      ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.com", False), ("", False)])
def test_is_loopback(host, ok):
    assert is_loopback(host) is ok


def test_refuse_plaintext_off_loopback(tmp_path, pki):
    service, _ = _tokenizer(tmp_path)
    with pytest.raises(SecurityError, match="refusing to serve plaintext"), BackgroundServer([registration(service)], host="0.0.0.0"):
        pass
    Security(allow_insecure=True).check_server("0.0.0.0")
    Security(tls_cert=pki["cert"], tls_key=pki["key"]).check_server("0.0.0.0")
    with BackgroundServer([registration(service)], host="0.0.0.0", security=Security(allow_insecure=True)) as port, \
            grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        assert _stats(ch).codebook_ref == service.current_ref


def test_cli_serve_refuses_then_insecure_flag(tmp_path, capsys):
    from components.cli import main

    repo = Path(__file__).resolve().parents[1]
    base = ["--params", str(repo / "params.yaml"), "--registry", str(tmp_path / "artifacts"), "serve", "retrieval", "--host", "0.0.0.0"]
    assert main(base) == 2
    assert "refusing to serve plaintext" in capsys.readouterr().err
    assert main(base + ["--insecure"]) == 2  # past the check: now it is the missing artifact that stops it
    err = capsys.readouterr().err
    assert "refusing" not in err and "retrieval-index" in err


# ---- settings: params, then environment ---------------------------------------------------------------
def test_resolve_from_params_and_env(monkeypatch):
    sp = ServingParams(auth_token="from-params", tls_ca="/p/ca.pem")
    s = Security.resolve(sp)
    assert (s.auth_token, s.tls_ca, s.auth_all, s.allow_insecure) == ("from-params", "/p/ca.pem", False, False)
    monkeypatch.setenv("GENREC_AUTH_TOKEN", "from-env")
    monkeypatch.setenv("GENREC_TLS_CERT", "/e/cert.pem")
    monkeypatch.setenv("GENREC_AUTH_ALL", "true")
    s = Security.resolve(sp)
    assert (s.auth_token, s.tls_cert, s.tls_ca, s.auth_all) == ("from-env", "/e/cert.pem", "/p/ca.pem", True)
    assert Security.resolve(sp, allow_insecure=True).allow_insecure is True
    assert Security.resolve(None, env={}).auth_token is None
    assert Security(auth_token="t").metadata() == (("authorization", "Bearer t"),) and Security().metadata() == ()


# ---- BentoML bundle: the same bearer token over HTTP ------------------------------------------------
def _asgi(mw, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bool]:
    import asyncio

    sent, reached = [], []

    async def send(msg):
        sent.append(msg)

    async def receive():
        return {"type": "http.request", "body": b""}

    async def run():
        await mw({"type": "http", "path": path, "headers": headers}, receive, send)

    mw.app = _Reached(reached)
    asyncio.run(run())
    return (sent[0]["status"] if sent else 200), bool(reached)


class _Reached:
    def __init__(self, log):
        self.log = log

    async def __call__(self, scope, receive, send):
        self.log.append(scope["path"])


def test_bento_bearer_middleware():
    bento = pytest.importorskip("components.serving.bento", reason="bentoml not installed")
    mw = bento.BearerTokenMiddleware(None, token=TOKEN)
    assert _asgi(mw, "/recommend", []) == (401, False)
    assert _asgi(mw, "/recommend", [(b"authorization", b"Bearer wrong")]) == (403, False)
    assert _asgi(mw, "/recommend", [(b"authorization", f"Bearer {TOKEN}".encode())]) == (200, True)
    assert _asgi(mw, "/readyz", []) == (200, True) and _asgi(mw, "/livez", []) == (200, True)  # probes stay open

    added = []

    class Svc:
        @classmethod
        def add_asgi_middleware(cls, m, **kw):
            added.append((m, kw))

    assert bento.install_auth(Svc, token="") is False and added == []
    assert bento.install_auth(Svc, token=TOKEN) is True and added == [(bento.BearerTokenMiddleware, {"token": TOKEN})]

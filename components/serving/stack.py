"""``genrec serve all``: the four services as one stack, wired from params.

One child process per service (``genrec serve <service>``: a crash stays in its process, each
can be scaled or restarted like the others), started in dependency order — tokenizer, retrieval,
rebalancer, then the generator pointed at the first two — each awaited on its gRPC health check
before the next starts. The parent prints one ``ready`` line with every address, then waits: on
SIGTERM / SIGINT it stops the services in reverse order (each gets its grace period for in-flight
calls), and if any child dies it stops the rest and exits non-zero (a supervisor restarts the
stack; the tokenizer resumes its live catalog, :func:`components.tokenizer.service.live_head`).

Which artifacts: the generator serves ``serving.generator`` (default: the pipeline's generator);
the tokenizer serves ``serving.codebook``, default the codebook that generator was trained on, so
an item added through AddItems gets its SID in the codebook the generator decodes — the
rebalanced (CRAB) one when the generator was fine-tuned on it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from components.registry import ArtifactNotFound, Registry

ORDER = ("tokenizer", "retrieval", "rebalancer", "generator")
HEALTH_NAMES = {"tokenizer": "genrec.v1.Tokenizer", "retrieval": "genrec.v1.Retrieval",
                "rebalancer": "genrec.v1.Rebalancer", "generator": "genrec.v1.Generator"}


class StackError(ValueError):
    """The stack cannot start as configured (missing artifact, a service that never got healthy)."""


def default_generator_ref(p: Any) -> str:
    return p.serving.generator or f"generator/{p.generator.name or p.data.dataset + '-' + p.generator.backbone}@latest"


def default_codebook_ref(p: Any, registry: Registry) -> str:
    """``serving.codebook``, else the codebook the served generator was trained on, else (no
    generator yet) ``codebook/<dataset>-<tokenizer.method>@latest``."""
    if p.serving.codebook:
        return p.serving.codebook
    try:
        cb = registry.load(default_generator_ref(p), verify=False).load_json("config.json").get("codebook")
    except (ArtifactNotFound, FileNotFoundError):
        cb = None
    return cb or f"codebook/{p.data.dataset}-{p.tokenizer.method}@latest"


def _client_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host)


def _free_port(host: str) -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((_client_host(host).strip("[]"), 0))
        return s.getsockname()[1]


PARENT_ENV = "GENREC_STACK_PARENT"  # a service started by serve all stops when this pid is no longer its parent


def watch_parent() -> None:
    """In a service that ``serve all`` started: SIGTERM itself when that parent dies (no orphaned
    services). A polling thread, not PR_SET_PDEATHSIG: that needs a preexec_fn, which makes Popen fork()
    through gRPC's fork handlers in a parent with live gRPC channels, and that fork hung the stack's start."""
    want = os.environ.get(PARENT_ENV)
    if not want:
        return
    import threading

    def poll() -> None:
        while os.getppid() == int(want):
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=poll, name="genrec-parent-watch", daemon=True).start()


@dataclass
class Child:
    service: str
    address: str
    proc: subprocess.Popen


def preflight(p: Any, registry: Registry, services: list[str]) -> dict[str, str]:
    """The artifact each service will serve; refuses (StackError) before anything starts."""
    refs: dict[str, str] = {}
    need = {"generator": default_generator_ref(p), "tokenizer": default_codebook_ref(p, registry),
            "retrieval": f"retrieval-index/{p.data.dataset}@latest"}
    for svc in [s for s in ("generator", "tokenizer", "retrieval") if s in services]:  # the generator first: it decides the codebook
        try:
            refs[svc] = registry.load(need[svc], verify=False).ref
        except ArtifactNotFound:
            hint = {"generator": "run `dvc repro` or `genrec train`", "tokenizer": "run `genrec tokenize`",
                    "retrieval": "run `genrec retrieval build`, or leave it out with --skip retrieval"}[svc]
            raise StackError(f"{svc}: {need[svc]} not found in {registry.root} ({hint})") from None
    return refs


def wait_healthy(address: str, service: str, security: Any, proc: subprocess.Popen, timeout_s: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{service} exited with code {proc.returncode} before it was healthy")
        try:
            with security.channel(address) as ch:
                r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=HEALTH_NAMES[service]), timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        except grpc.RpcError as e:
            last = f"{e.code().name}: {e.details()}"
        time.sleep(0.3)
    raise StackError(f"{service} on {address} not healthy after {timeout_s:.0f}s (last: {last})")


def _stop(children: list[Child], grace_s: float) -> None:
    for c in reversed(children):  # generator first: it calls the others
        if c.proc.poll() is None:
            c.proc.send_signal(signal.SIGTERM)
            try:
                c.proc.wait(timeout=grace_s + 10)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()


def run_stack(args: Any, ctx: Any) -> int:
    from components.serving.security import Security

    p = ctx.params
    sp = p.serving
    skip = set(args.skip or [])
    unknown = sorted(skip - set(ORDER))
    if unknown:
        raise StackError(f"--skip: unknown services {unknown}; one of {list(ORDER)}")
    services = [s for s in ORDER if s not in skip]
    if "generator" in services and "tokenizer" not in services:
        print("serve all: no tokenizer: the generator will not learn of items added live", flush=True)
    host = args.host or sp.host
    security = Security.resolve(sp, allow_insecure=True if args.insecure else None)
    security.check_server(host)  # refuse plaintext off loopback before anything starts
    registry = ctx.registry
    refs = preflight(p, registry, services)
    ports = {s: (sp.ports[s] or _free_port(host)) for s in services}
    addr = {s: f"{_client_host(host)}:{ports[s]}" for s in services}
    base = [sys.executable, "-m", "components.cli", "--params", str(ctx.args.params), "--registry", str(registry.root)]
    for kv in ctx.args.set:
        base += ["--set", kv]
    children: list[Child] = []
    stopping = {"signal": None}

    def on_signal(signum, _frame):
        stopping["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for svc in services:
            cmd = [*base]
            if svc == "generator":
                cmd += ["--set", f"serving.tokenizer_address={addr['tokenizer'] if 'tokenizer' in services else 'null'}",
                        "--set", f"serving.retrieval_address={addr['retrieval'] if 'retrieval' in services else 'null'}"]
            cmd += ["serve", svc, "--host", host, "--port", str(ports[svc]), "--grace", str(args.grace)]
            if svc in refs:
                cmd += ["--artifact", refs[svc]]
            if args.insecure:
                cmd.append("--insecure")
            print(f"serve all: starting {svc} on {addr[svc]}" + (f" ({refs[svc]})" if svc in refs else ""), flush=True)
            # own session: a Ctrl-C reaches only this parent, which stops the services in order
            proc = subprocess.Popen(cmd, env={**os.environ, PARENT_ENV: str(os.getpid())}, start_new_session=True)
            children.append(Child(svc, addr[svc], proc))
            wait_healthy(addr[svc], svc, security, proc, args.timeout)
            if stopping["signal"]:
                break
        if not stopping["signal"]:
            print("serve all: ready " + " ".join(f"{c.service}={c.address}" for c in children), flush=True)
        while not stopping["signal"]:
            dead = [c for c in children if c.proc.poll() is not None]
            if dead:
                print(f"serve all: {dead[0].service} exited with code {dead[0].proc.returncode}; stopping the stack", flush=True)
                _stop(children, args.grace)
                return 1
            time.sleep(0.2)
        print(f"serve all: {signal.Signals(stopping['signal']).name}: stopping", flush=True)
        return 0
    finally:
        _stop(children, args.grace)
        for s, h in old.items():
            signal.signal(s, h)

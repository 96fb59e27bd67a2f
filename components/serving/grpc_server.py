"""The shared ``grpc.aio`` server runner every component service uses.

- standard health service (``grpc.health.v1``) and server reflection;
- graceful shutdown on SIGTERM/SIGINT (in-flight calls get ``grace_s`` seconds);
- :func:`unary` wraps a servicer method: the synchronous core call runs in a worker thread (torch
  and numpy never block the event loop), the client's deadline is honoured, and exceptions map to
  status codes: bad input → INVALID_ARGUMENT, unknown artifact → NOT_FOUND, incompatible
  artifacts → FAILED_PRECONDITION, a dependency down → UNAVAILABLE, anything else → INTERNAL
  (logged). The server keeps serving after each.
- :class:`~components.serving.security.Security`: TLS / mTLS, bearer-token interceptor, and no
  plaintext off loopback unless explicitly allowed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from typing import Any, Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AioHealthServicer
from grpc_reflection.v1alpha import reflection

from components.registry import ArtifactCorrupted, ArtifactIncompatible, ArtifactNotFound
from components.serving.security import Security

log = logging.getLogger("genrec.serving")


class Unavailable(RuntimeError):
    """A service this one depends on cannot be reached."""


class DeadlineExceeded(RuntimeError):
    pass


def status_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, ArtifactNotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, (ArtifactIncompatible, ArtifactCorrupted)):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, Unavailable):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, (DeadlineExceeded, asyncio.TimeoutError)):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, (ValueError, KeyError, IndexError, TypeError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def unary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``def method(self, request) -> response`` (synchronous core work) as an aio handler."""

    @functools.wraps(fn)
    async def handler(self, request, context: grpc.aio.ServicerContext):
        remaining = context.time_remaining()
        try:
            call = asyncio.to_thread(fn, self, request)
            return await (asyncio.wait_for(call, timeout=remaining) if remaining is not None else call)
        except Exception as e:  # noqa: BLE001 (every failure becomes a status, never a crash)
            code = status_for(e)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("internal error in %s", fn.__name__)
            msg = str(e).strip() or type(e).__name__
            await context.abort(code, msg[:2000])

    return handler


class MicroBatcher:
    """Merge concurrent requests into one call of ``fn(items) -> results``.

    ``await submit(item)`` queues the item; a single consumer task takes the first waiting item,
    gathers more until ``max_batch`` or ``max_wait_s`` has passed, runs ``fn`` on the batch in a
    worker thread (one batch at a time, so the event loop never blocks) and resolves each caller's
    future with its own result — or its own exception, when ``fn`` returns one in that slot.
    """

    def __init__(self, fn: Callable[[list], list], max_batch: int = 64, max_wait_s: float = 0.005):
        self.fn, self.max_batch, self.max_wait_s = fn, max_batch, max_wait_s
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._consume())
        fut = loop.create_future()
        await self._queue.put((item, fut))
        return await fut

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            live = [(i, f) for i, f in batch if not f.done()]  # callers may have given up (deadline)
            if not live:
                continue
            try:
                results = await asyncio.to_thread(self.fn, [i for i, _ in live])
            except Exception as e:  # noqa: BLE001 (fn should not raise; if it does, every caller gets it)
                results = [e] * len(live)
            self.batches += 1
            self.items += len(live)
            for (_, f), r in zip(live, results):
                if not f.done():
                    f.set_exception(r) if isinstance(r, BaseException) else f.set_result(r)


async def _run(server: grpc.aio.Server, health_servicer: AioHealthServicer, names: Iterable[str], grace_s: float, ready: asyncio.Event | None) -> None:
    await server.start()
    for n in names:
        await health_servicer.set(n, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    if ready is not None:
        ready.set()
    waiter = asyncio.create_task(server.wait_for_termination())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if stopper.done():
        log.info("shutting down (grace %.1fs)", grace_s)
        for n in names:
            await health_servicer.set(n, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(grace_s)
    waiter.cancel()
    stopper.cancel()


def build_server(registrations: list[tuple[Callable, Any, str]], max_message_mb: int = 16,
                 security: Security | None = None) -> tuple[grpc.aio.Server, AioHealthServicer, list[str]]:
    """``registrations``: ``(add_XServicer_to_server, servicer, full service name)``; ``security``
    adds the bearer-token interceptor when it has a token (TLS is applied when binding)."""
    opts = [("grpc.max_receive_message_length", max_message_mb << 20), ("grpc.max_send_message_length", max_message_mb << 20)]
    server = grpc.aio.server(options=opts, interceptors=(security or Security()).interceptors())
    names = []
    for add, servicer, name in registrations:
        add(servicer, server)
        names.append(name)
    health_servicer = AioHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return server, health_servicer, names


def serve(registrations: list[tuple[Callable, Any, str]], host: str = "127.0.0.1", port: int = 0, grace_s: float = 5.0,
          on_port: Callable[[int], None] | None = None, security: Security | None = None) -> None:
    """Blocking: serve until SIGTERM/SIGINT. ``port=0`` picks a free port (reported to ``on_port``).
    ``security``: TLS / bearer token / plaintext policy (default: plaintext, loopback only)."""
    security = security or Security()
    security.check_server(host)  # refuse bad TLS settings / plaintext off loopback before starting

    async def main() -> None:
        server, hs, names = build_server(registrations, security=security)
        bound = security.bind(server, host, port)
        if bound == 0:
            raise OSError(f"cannot bind {host}:{port}")
        mode = ("mTLS" if security.tls_client_ca else "TLS") if security.server_tls else "plaintext"
        auth = (" auth=all" if security.auth_all else " auth=writes") if security.auth_token else ""
        log.info("serving %s (%s%s) on %s:%d", ", ".join(names), mode, auth, host, bound)
        print(f"genrec: serving {', '.join(names)} ({mode}{auth}) on {host}:{bound}", flush=True)  # port last: scripts parse it
        if on_port:
            on_port(bound)
        await _run(server, hs, names, grace_s, None)

    asyncio.run(main())


class BackgroundServer:
    """Run a server on its own event loop in a daemon thread (tests, in-process composition).

    ``with BackgroundServer([...]) as port: ...`` serves on 127.0.0.1:port until the block ends.
    """

    def __init__(self, registrations: list[tuple[Callable, Any, str]], host: str = "127.0.0.1", port: int = 0, grace_s: float = 1.0,
                 security: Security | None = None):
        import threading

        self.registrations, self.host, self.port, self.grace_s = registrations, host, port, grace_s
        self.security = security or Security()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server, hs, names = build_server(self.registrations, security=self.security)
            self.port = self.security.bind(server, self.host, self.port)
            await server.start()
            for n in names:
                await hs.set(n, health_pb2.HealthCheckResponse.SERVING)
            self._started.set()
            await self._stop.wait()
            await server.stop(self.grace_s)

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001
            self._error = e
            self._started.set()

    def __enter__(self) -> int:
        self._thread.start()
        self._started.wait(30)
        if self._error:
            raise self._error
        return self.port

    def stop(self) -> None:
        if self._loop and self._stop and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __exit__(self, *exc) -> None:
        self.stop()

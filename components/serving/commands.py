"""``genrec serve SERVICE --port P --artifact REF``: one gRPC server per component."""

from __future__ import annotations

import logging


def register(sub) -> None:
    s = sub.add_parser("serve", help="serve a component over gRPC (health + reflection, SIGTERM = graceful stop)")
    s.add_argument("service", choices=[*sorted(SERVICES), "all"],
                   help="which component; all = the four wired together (serving.host / serving.ports), one process each")
    s.add_argument("--host", default=None, help="bind address (default: 127.0.0.1; all: serving.host)")
    s.add_argument("--port", type=int, default=0, help="0 = any free port (printed); all: serving.ports")
    s.add_argument("--artifact", default=None, help="artifact the service serves (default: generator = serving.generator or the pipeline's; "
                   "tokenizer = serving.codebook or the served generator's codebook; retrieval = the dataset's latest index)")
    s.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get on shutdown")
    s.add_argument("--insecure", action="store_true",
                   help="allow plaintext gRPC on a non-loopback --host (otherwise TLS is required there: serving.tls_cert/tls_key)")
    s.add_argument("--skip", nargs="*", default=[], metavar="SERVICE", help="all: services not to start (e.g. --skip retrieval)")
    s.add_argument("--timeout", type=float, default=180.0, help="all: seconds each service gets to become healthy")
    s.set_defaults(func=cmd_serve)
    register_bento(sub)


def _retrieval(args, ctx):
    from components.retrieval.retriever import UserRetriever
    from components.retrieval.service import RetrievalService, registration

    ref = args.artifact or f"retrieval-index/{ctx.params.data.dataset}@latest"
    art = ctx.registry.load(ref)
    rp = ctx.params.retrieval
    return [registration(RetrievalService(UserRetriever.from_artifact(art), art.ref, default_z=rp.z, default_v=rp.v))]


def _tokenizer(args, ctx):
    from components.tokenizer.service import TokenizerService, registration

    from components.serving.stack import default_codebook_ref

    p = ctx.params
    ref = args.artifact or default_codebook_ref(p, ctx.registry)
    service = TokenizerService(ctx.registry, ref, p.tokenizer, seed=p.seed)
    print(f"genrec: tokenizer codebook {service.current_ref}" + ("" if service.current_ref.startswith(ref.split("@")[0] + "@") else f" (live head of {ref})"), flush=True)
    return [registration(service)]


def _rebalancer(args, ctx):
    from components.rebalancer.service import RebalancerService, registration

    return [registration(RebalancerService(ctx.registry, ctx.params.rebalance, seed=ctx.params.seed, default_dataset=ctx.params.data.dataset))]


def _generator(args, ctx):
    from components.generator.recommend import Recommender
    from components.generator.service import GeneratorService, Limits, registration
    from components.serving.clients import RetrievalClient, TokenizerClient
    from components.tokenizer.encoders import resolve_device

    from components.serving.stack import default_generator_ref

    p, sp = ctx.params, ctx.params.serving
    ref = args.artifact or default_generator_ref(p)
    art = ctx.registry.load(ref)
    rec = Recommender.from_registry(ctx.registry, art.ref, device=resolve_device(sp.device), batch_size=sp.max_batch)
    from components.serving.security import Security

    kw = {"timeout_s": sp.client_timeout_s, "retries": sp.client_retries, "security": Security.resolve(sp)}
    service = GeneratorService(
        rec, art.ref, registry=ctx.registry,
        limits=Limits(sp.max_history, sp.max_k, sp.max_beam, sp.max_batch, sp.default_beam, sp.batch_wait_ms),
        tokenizer=TokenizerClient(sp.tokenizer_address, **kw) if sp.tokenizer_address else None,
        retrieval=RetrievalClient(sp.retrieval_address, **kw) if sp.retrieval_address else None,
        codebook_ref=art.load_json("config.json").get("codebook"),
    )
    if service.tokenizer is not None:
        try:  # items added before this (re)start: serve the tokenizer's current codebook at once
            service.refresh()
        except Exception as e:  # noqa: BLE001 (the tokenizer may be down: the first unknown item retries)
            logging.getLogger("genrec.serving").warning("no codebook from the tokenizer at start: %s", e)
    if sp.refresh_s > 0 and service.tokenizer is not None:
        _poll(service, sp.refresh_s)
    return [registration(service)]


def _poll(service, every_s: float) -> None:
    """Ask the tokenizer for a new codebook every ``every_s`` seconds (daemon thread)."""
    import threading

    log = logging.getLogger("genrec.serving")

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(every_s):
            try:
                service.refresh()
            except Exception as e:  # noqa: BLE001 (a failed poll must not kill the server)
                log.warning("codebook refresh failed: %s", e)

    threading.Thread(target=loop, daemon=True, name="codebook-refresh").start()


SERVICES = {"retrieval": _retrieval, "tokenizer": _tokenizer, "rebalancer": _rebalancer, "generator": _generator}


def cmd_serve(args, ctx) -> int:
    from components.serving.grpc_server import serve
    from components.serving.security import Security

    logging.getLogger("genrec").setLevel(logging.INFO)
    if args.service == "all":
        from components.serving.stack import run_stack

        return run_stack(args, ctx)
    from components.serving.stack import watch_parent

    watch_parent()
    args.host = args.host or "127.0.0.1"
    security = Security.resolve(ctx.params.serving, allow_insecure=True if getattr(args, "insecure", False) else None)
    security.check_server(args.host)  # refuse before loading any artifact
    registrations = SERVICES[args.service](args, ctx)
    serve(registrations, host=args.host, port=args.port, grace_s=args.grace, security=security)
    return 0


def register_bento(sub) -> None:
    b = sub.add_parser("bento", help="BentoML bundle: fill the BentoML model store from the registry")
    bsub = b.add_subparsers(dest="bento_command", metavar="ACTION")
    bsub.required = True
    i = bsub.add_parser("import", help="copy a generator checkpoint (and its codebook) into the BentoML model store")
    i.add_argument("ref", nargs="?", default=None, help="generator artifact (default: generator/<dataset>-<backbone>@latest)")
    i.add_argument("--name", default="genrec-generator", help="BentoML model name")
    i.set_defaults(func=cmd_bento_import)


def cmd_bento_import(args, ctx) -> int:
    from components.serving.bento import import_to_bentoml

    p = ctx.params
    from components.serving.stack import default_generator_ref

    ref = args.ref or default_generator_ref(p)
    model = import_to_bentoml(ctx.registry, ref, name=args.name)
    print(f"bentoml model {model.tag} <- {ref}")
    return 0

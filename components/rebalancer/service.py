"""The rebalancer gRPC service: ``Rebalance`` a codebook reference with CRAB → a new codebook
reference plus before/after statistics. Request fields left at 0 / empty take the server's
``rebalance:`` params."""

from __future__ import annotations

import json
import threading

from components.rebalancer.crab import RebalanceError
from components.rebalancer.params import RebalanceParams
from components.rebalancer.pipeline import run_rebalance
from components.registry import Registry, parse_ref
from components.serving.grpc_server import unary
from components.serving.pb.genrec.v1 import common_pb2, rebalancer_pb2, rebalancer_pb2_grpc

SERVICE_NAME = "genrec.v1.Rebalancer"


class RebalancerService(rebalancer_pb2_grpc.RebalancerServicer):
    def __init__(self, registry: Registry, params: RebalanceParams, seed: int = 2024, default_dataset: str | None = None):
        self.registry, self.params, self.seed = registry, params, seed
        self.default_dataset = default_dataset
        self._lock = threading.Lock()  # one split at a time: it is CPU-bound and writes the registry

    @unary
    def Rebalance(self, request):
        if not request.codebook_ref:
            raise RebalanceError("codebook_ref is required")
        dataset_ref = request.dataset_ref or (f"dataset/{self.default_dataset}@latest" if self.default_dataset else "")
        if not dataset_ref:
            raise RebalanceError("dataset_ref is required (the dataset whose training counts define popularity)")
        update = {"codebook": request.codebook_ref, "enabled": True}
        if request.split_ratio:
            update["split_ratio"] = request.split_ratio
        if request.max_splits:
            update["max_splits"] = request.max_splits
        if request.HasField("balance_weight"):
            update["lam"] = request.balance_weight
        if request.levels:
            update["levels"] = list(request.levels)
        try:
            params = RebalanceParams.model_validate({**self.params.model_dump(), **update})
        except Exception as e:  # pydantic ValidationError: name the bad field
            raise RebalanceError(f"invalid rebalance parameters: {e}") from None
        name = parse_ref(dataset_ref).name
        with self._lock:
            out = run_rebalance(self.registry, params, name, seed=self.seed, dataset_ref=dataset_ref)
        levels = out.metrics.get("levels", {})
        before = {k: {kk[:-7]: vv for kk, vv in v.items() if kk.endswith("_before")} for k, v in levels.items()}
        after = {k: {kk[:-6]: vv for kk, vv in v.items() if kk.endswith("_after")} for k, v in levels.items()}
        return rebalancer_pb2.RebalanceResponse(
            codebook_ref=out.artifact.ref, before=common_pb2.Stats(json=json.dumps(before)), after=common_pb2.Stats(json=json.dumps(after))
        )


def registration(service: RebalancerService):
    return (rebalancer_pb2_grpc.add_RebalancerServicer_to_server, service, SERVICE_NAME)

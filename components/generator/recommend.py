"""``Recommender``: external item ids in, top-k item ids and scores out (the API the CLI, gRPC and
BentoML front doors call).

Bad input: unknown item ids raise :class:`UnknownItemsError` naming them (or are dropped with
``skip_unknown=True``, reported per request); an empty history (after skipping) gets the
``k`` most popular training items, flagged ``fallback=True`` with scores ``log(share)``;
``k`` larger than the catalog or ``beam < k`` raise :class:`GeneratorError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from components.generator.checkpoint import load_checkpoint
from components.generator.decoding import constrained_beam_search
from components.generator.decoding.trie import build_trie
from components.generator.errors import GeneratorError, UnknownItemsError
from components.generator.heads.base import EXTRA_USER
from components.generator.model import GenerativeRecommender
from components.tokenizer.codebook import Codebook


@dataclass
class Recommendations:
    item_ids: list[list[str]]
    indices: np.ndarray  # int32 [n, k]
    scores: np.ndarray  # float32 [n, k], summed log-probabilities (fallback rows: log popularity share)
    fallback: np.ndarray  # bool [n], True = empty history, popularity fallback
    skipped: list[list[str]] = field(default_factory=list)  # unknown ids dropped per request


class Recommender:
    def __init__(self, model: GenerativeRecommender, codebook: Codebook, popularity: np.ndarray | None = None,
                 batch_size: int = 256, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.codebook = codebook
        self.item_ids = list(codebook.item_ids)
        self.index = {iid: i for i, iid in enumerate(self.item_ids)}
        self.trie = build_trie(codebook.sids, codebook.sizes).to(self.device)
        pop = np.ones(len(self.item_ids)) if popularity is None else np.asarray(popularity, dtype=np.float64)
        if pop.shape[0] != len(self.item_ids):
            raise GeneratorError(f"popularity has {pop.shape[0]} entries for {len(self.item_ids)} items")
        self.pop_order = np.argsort(-pop, kind="stable")
        self.pop_logshare = np.log(np.maximum(pop, 1e-12) / max(pop.sum(), 1e-12)).astype(np.float32)
        self.batch_size = batch_size

    @classmethod
    def from_registry(cls, registry, ref: str, codebook: Codebook | None = None, device: str = "cpu", batch_size: int = 256) -> "Recommender":
        model, cb, art = load_checkpoint(registry, ref, codebook, device=device)
        pop = art.load_numpy("popularity.npy") if art.has_file("popularity.npy") else None
        return cls(model, cb, pop, batch_size=batch_size, device=device)

    def _to_indices(self, histories, skip_unknown: bool) -> tuple[list[list[int]], list[list[str]]]:
        out, skipped, unknown = [], [], []
        for h in histories:
            if isinstance(h, (str, bytes)):
                raise GeneratorError("each history must be a list of item ids, not a string")
            row, sk = [], []
            for iid in h:
                i = self.index.get(str(iid))
                if i is None:
                    sk.append(str(iid))
                else:
                    row.append(i)
            if sk and not skip_unknown:
                unknown += sk
            out.append(row)
            skipped.append(sk)
        if unknown:
            raise UnknownItemsError(list(dict.fromkeys(unknown)))
        return out, skipped

    @torch.no_grad()
    def retrieval_head(self):
        """The head that takes retrieved neighbours (GenPlugin with RAR active), or None."""
        for h in getattr(self.model, "heads", []):
            p = getattr(h, "p", None)
            if hasattr(h, "neighbor_extras") and getattr(p, "rar", False) and getattr(p, "rar_active", False):
                return h
        return None

    def recommend(self, histories: list[list[str]], k: int = 10, beam: int = 20, skip_unknown: bool = False,
                  neighbors: list[list[list[str]]] | None = None, model_ref: str | None = None,
                  users: list[str | None] | None = None) -> Recommendations:
        """``neighbors[i]``: the histories (external item ids) of request ``i``'s retrieved users, for a
        model with a retrieval head (given by a retrieval service; ``[]`` = answer without augmentation).
        ``None`` leaves retrieval to the head itself (the index its checkpoint pins); then ``users[i]``
        (an external user id, or None) is excluded from request ``i``'s neighbours, as in training."""
        rows, skipped = self._to_indices(histories, skip_unknown)  # unknown items first: a caller may grow the catalog and retry
        n_items = len(self.item_ids)
        if k < 1 or k > n_items:
            raise GeneratorError(f"k must be in [1, {n_items}] (the catalog size), got {k}")
        if beam < k:
            raise GeneratorError(f"beam ({beam}) must be >= k ({k})")
        n = len(rows)
        idx = np.empty((n, k), dtype=np.int32)
        scores = np.empty((n, k), dtype=np.float32)
        fallback = np.array([len(r) == 0 for r in rows], dtype=bool)
        idx[fallback] = self.pop_order[:k]
        scores[fallback] = self.pop_logshare[self.pop_order[:k]]
        live = np.nonzero(~fallback)[0]
        for s in range(0, len(live), self.batch_size):
            sel = live[s : s + self.batch_size]
            hist = self.model.encode_history([rows[i] for i in sel])
            extras = None
            head = self.retrieval_head() if neighbors is not None else None
            if head is not None:
                nbr = [[[self.index[x] for x in h if x in self.index] for h in neighbors[i]] for i in sel]
                extras = head.neighbor_extras(nbr, model_ref=model_ref)
            elif users is not None and (rh := self.retrieval_head()) is not None:
                idx_u = rh.user_indices([users[i] for i in sel])
                extras = {EXTRA_USER: torch.tensor(idx_u, dtype=torch.long, device=self.device)}
            res = constrained_beam_search(self.model, hist, self.trie, beam=beam, k=k, extras=extras)
            idx[sel] = res.items.cpu().numpy()
            scores[sel] = res.scores.cpu().numpy()
        return Recommendations([[self.item_ids[i] for i in r] for r in idx.tolist()], idx, scores, fallback, skipped)

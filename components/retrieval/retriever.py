"""Dual-path similar-user retrieval (GenPlugin §3.3) and its ``retrieval-index`` artifact.

For a query user (or a raw history):

1. **content path**: BM25 over user pseudo-documents (:mod:`components.retrieval.bm25`), top ``z``;
2. **collaborative path**: cosine over user vectors in faiss (:mod:`components.retrieval.vectors`), top ``z``;
   the vectors are the mean of the history's item embeddings (``item-mean``) or, as in the paper, a
   trained SASRec's user states ``g_u`` (``sasrec``: the SASRec is stored in the index and encodes
   raw-history queries too);
3. **merge and re-rank**: the ≤ 2z candidates are re-ranked by cosine between the query's and the
   candidates' vectors in the re-rank space (:func:`merge`). GenPlugin re-ranks with its own ID-view
   user representations (:meth:`candidates` + :func:`merge`, in the head); :meth:`similar_users` and
   the retrieval service use the collaborative user vectors. Users found by *both* paths are
   always kept (they come first, by cosine); the rest fill up to ``v`` by cosine.

Exclusions: the query user itself — given as ``user`` (queried by the indexed history) or as
``exclude_user`` next to a raw ``history`` (what GenPlugin does for every sample, in training and
at inference alike) — and, optionally, (``exclude_item``) every user whose indexed history holds
that item. Only training interactions are indexed (``Dataset.train_sequences``), so the only
indexed history that holds a sample's own future (its target and later items) is the sample's
user's; excluding the query user is therefore enough to keep a target from leaking in, and other
users' training interactions are visible in the same way at training and at inference.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from components.registry import Artifact, ArtifactCorrupted, ArtifactIncompatible, Registry
from components.retrieval import vectors as vec
from components.retrieval.bm25 import SparseBM25, item_tokens, user_documents

PATHS = ("bm25", "cf", "both")


class RetrievalError(ValueError):
    """Bad retrieval request (unknown user, empty history, z/v out of range)."""


@dataclass(frozen=True)
class Neighbor:
    user: int
    score: float  # cosine in the re-rank space
    path: str  # "bm25", "cf" or "both"


def _top(scores: np.ndarray, k: int, banned: np.ndarray) -> np.ndarray:
    s = scores.astype(np.float64, copy=True)
    s[banned] = -np.inf
    k = min(k, int(np.isfinite(s).sum()))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.argpartition(-s, k - 1)[:k]
    return idx[np.argsort(-s[idx], kind="stable")]


def union(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The candidates of both paths, sorted by user index (the order :func:`merge` scores them in)."""
    return np.array(sorted(set(np.asarray(a).tolist()) | set(np.asarray(c).tolist())), dtype=np.int64)


def merge(a: np.ndarray, c: np.ndarray, cos: np.ndarray, v: int) -> list[Neighbor]:
    """GenPlugin §3.3's merge of the BM25 (``a``) and faiss (``c``) candidates: ``cos[k]`` is the
    re-rank similarity of ``union(a, c)[k]`` to the query; users found by both paths come first (by
    cosine), the rest fill up to ``v`` by cosine (ties: lower user index)."""
    cands = union(a, c)
    in_a, in_c = set(np.asarray(a).tolist()), set(np.asarray(c).tolist())
    both = in_a & in_c
    cos = np.asarray(cos, dtype=np.float64).reshape(-1)
    if len(cos) != len(cands):
        raise RetrievalError(f"{len(cos)} similarities for {len(cands)} candidates")
    order = sorted(range(len(cands)), key=lambda k: (int(cands[k]) not in both, -cos[k], int(cands[k])))
    out = []
    for k in order[:v]:
        cu = int(cands[k])
        out.append(Neighbor(cu, float(cos[k]), "both" if cu in both else ("bm25" if cu in in_a else "cf")))
    return out


class UserRetriever:
    def __init__(
        self,
        bm25: SparseBM25,
        user_vectors: np.ndarray,
        item_vectors: np.ndarray,
        train_histories: Sequence[Sequence[int]],
        item_tokens_: Sequence[list[str]],
        user_ids: Sequence[str],
        dataset_ref: str = "",
        index_kind: str = "flat",
        rerank_vectors: np.ndarray | None = None,
        faiss_blob: np.ndarray | None = None,
        index_params: dict[str, Any] | None = None,
        item_ids: Sequence[str] | None = None,
        query_encoder=None,
    ):
        n = len(user_ids)
        if bm25.n_docs != n or len(user_vectors) != n or len(train_histories) != n:
            raise ArtifactIncompatible(f"retrieval parts disagree: {bm25.n_docs} docs, {len(user_vectors)} vectors, {n} users")
        self.bm25 = bm25
        self.user_vectors = vec.normalize(user_vectors)
        self.item_vectors = vec.normalize(item_vectors)
        self.rerank_vectors = vec.normalize(rerank_vectors) if rerank_vectors is not None else self.user_vectors
        self.train_histories = [list(map(int, h)) for h in train_histories]
        self.item_tokens = list(item_tokens_)
        self.user_ids = list(user_ids)
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.dataset_ref = dataset_ref
        self.index_kind = index_kind
        self.index_params = index_params or {}
        self.item_ids = list(item_ids) if item_ids is not None else [str(i) for i in range(len(self.item_vectors))]
        if len(self.item_ids) != len(self.item_vectors):
            raise ArtifactIncompatible(f"{len(self.item_ids)} item ids for {len(self.item_vectors)} item vectors")
        self.item_index = {iid: i for i, iid in enumerate(self.item_ids)}
        self.query_encoder = query_encoder  # SASRec when user_vectors = sasrec (encodes raw-history queries), else None
        self.user_vectors_kind = "sasrec" if query_encoder is not None else "item-mean"
        self.faiss = vec.deserialize(faiss_blob) if faiss_blob is not None else vec.build_faiss(self.user_vectors, index_kind, **self.index_params)
        # item -> users whose indexed history holds it (CSR), for leakage exclusion
        pairs = sorted({(i, u) for u, h in enumerate(self.train_histories) for i in h})
        items = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
        self._holders_users = np.fromiter((p[1] for p in pairs), dtype=np.int64, count=len(pairs))
        self._holders_ptr = np.searchsorted(items, np.arange(len(self.item_vectors) + 1))

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def holders(self, item: int) -> np.ndarray:
        return self._holders_users[self._holders_ptr[item] : self._holders_ptr[item + 1]]

    # ---- build --------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        dataset,
        item_vectors: np.ndarray,
        fields: Sequence[str] = ("title", "brand", "categories"),
        user_vectors: np.ndarray | None = None,
        index_kind: str = "flat",
        k1: float = 1.5,
        b: float = 0.75,
        dataset_ref: str = "",
        index_params: dict[str, Any] | None = None,
        sasrec=None,
    ) -> "UserRetriever":
        """Index a :class:`~components.data.Dataset`'s training histories. ``item_vectors`` (one
        row per item) define the default user vectors (mean of history items); with ``sasrec`` (a
        trained :class:`~components.evaluation.baselines.sasrec.SASRec` over this catalog) the user
        vectors are its user states and it encodes raw-history queries."""
        if item_vectors.shape[0] != dataset.n_items:
            raise ArtifactIncompatible(f"{item_vectors.shape[0]} item vectors for {dataset.n_items} items")
        if sasrec is not None and sasrec.config.n_items != dataset.n_items:
            raise ArtifactIncompatible(f"the SASRec model covers {sasrec.config.n_items} items, the dataset {dataset.n_items}")
        histories = dataset.train_sequences()
        toks = item_tokens(dataset.item_text, fields)
        bm25 = SparseBM25.fit(user_documents(histories, toks), k1=k1, b=b)
        if user_vectors is not None:
            uv = user_vectors
        elif sasrec is not None:
            uv = vec.sasrec_user_vectors(histories, sasrec)
        else:
            uv = vec.mean_item_vectors(histories, item_vectors)
        return cls(bm25, uv, item_vectors, histories, toks, dataset.user_ids, dataset_ref, index_kind, index_params=index_params,
                   item_ids=dataset.item_ids, query_encoder=sasrec)

    # ---- query --------------------------------------------------------------------------------
    def _user(self, user: int | str) -> int:
        u = self.user_index.get(user) if isinstance(user, str) else int(user)
        if u is None or not 0 <= u < self.n_users:
            raise RetrievalError(f"unknown user {user!r}")
        return u

    def _query(self, user: int | str | None, history: Sequence[int] | None) -> tuple[int | None, list[str], np.ndarray, np.ndarray]:
        if (user is None) == (history is None):
            raise RetrievalError("give exactly one of user or history")
        if user is not None:
            u = self._user(user)
            hist = self.train_histories[u]
            if not hist:
                raise RetrievalError(f"user {self.user_ids[u]!r} has an empty training history")
            return u, [t for i in hist for t in self.item_tokens[i]], self.user_vectors[u], self.rerank_vectors[u]
        hist = self._checked_history(history)
        qvec = self.history_vector(hist)  # one encoding: the raw history's vector is also its re-rank vector
        return None, [t for i in hist for t in self.item_tokens[i]], qvec, qvec

    def _checked_history(self, history: Sequence[int]) -> list[int]:
        hist = [int(i) for i in history]
        if not hist:
            raise RetrievalError("empty history")
        bad = [i for i in hist if not 0 <= i < len(self.item_vectors)]
        if bad:
            raise RetrievalError(f"unknown item indices in history: {bad[:10]}")
        return hist

    def history_vector(self, hist: Sequence[int]) -> np.ndarray:
        """A raw history's vector in the user-vector space: SASRec's user state (``sasrec``) or the
        mean of its items' vectors (``item-mean``), L2-normalised."""
        return self.history_vectors([hist])[0]

    def history_vectors(self, hists: Sequence[Sequence[int]]) -> np.ndarray:
        """:meth:`history_vector` of many raw histories, one SASRec batch ``[n, d]``."""
        if self.query_encoder is not None:
            return vec.normalize(self.query_encoder.encode([list(h) for h in hists]))
        return vec.normalize(np.stack([self.item_vectors[list(h)].mean(axis=0) for h in hists]))

    def _check_zv(self, z: int, v: int) -> None:
        if z < 1 or v < 1:
            raise RetrievalError(f"z and v must be ≥ 1 (got z={z}, v={v})")
        if z >= self.n_users or v >= self.n_users:
            raise RetrievalError(f"z={z} and v={v} must be smaller than the {self.n_users} indexed users")

    def banned(self, u: int | None, exclude_item: int | None) -> np.ndarray:
        mask = np.zeros(self.n_users, dtype=bool)
        if u is not None:
            mask[u] = True
        if exclude_item is not None:
            mask[self.holders(int(exclude_item))] = True
        return mask

    def items_to_indices(self, item_ids: Sequence[str]) -> list[int]:
        unknown = [i for i in item_ids if i not in self.item_index]
        if unknown:
            raise RetrievalError(f"unknown item ids: {unknown[:10]}")
        return [self.item_index[i] for i in item_ids]

    def bm25_top(self, tokens: list[str], z: int, banned: np.ndarray) -> np.ndarray:
        return _top(self.bm25.scores(tokens), z, banned)

    def cf_top(self, qvec: np.ndarray, z: int, banned: np.ndarray) -> np.ndarray:
        want = z + int(banned.sum())
        _, idx = self.faiss.search(qvec[None, :].astype(np.float32), min(want, self.n_users))
        idx = idx[0]
        idx = idx[(idx >= 0)]
        return idx[~banned[idx]][:z].astype(np.int64)

    def candidates(
        self,
        user: int | str | None = None,
        history: Sequence[int] | None = None,
        z: int = 20,
        exclude_item: int | None = None,
        exclude_user: int | str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The dual-path candidates before the re-rank: BM25's top ``z`` and faiss's top ``z`` (user
        indices, best first), and the query's vector in the re-rank space."""
        if z < 1:
            raise RetrievalError(f"z must be ≥ 1 (got z={z})")
        if z >= self.n_users:
            raise RetrievalError(f"z={z} must be smaller than the {self.n_users} indexed users")
        u, tokens, qvec, rvec = self._query(user, history)
        if u is None and exclude_user is not None:
            u = self._user(exclude_user)
        banned = self.banned(u, exclude_item)
        return self.bm25_top(tokens, z, banned), self.cf_top(qvec, z, banned), rvec

    def candidates_batch(
        self,
        histories: Sequence[Sequence[int]],
        z: int = 20,
        exclude_users: Sequence[int | str | None] | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`candidates` (BM25 top ``z``, faiss top ``z``) of many raw histories at once, row
        ``k`` excluding ``exclude_users[k]``: one SASRec batch and one faiss search for all of them
        (what GenPlugin's RAR asks for every training batch and ranking batch)."""
        if z < 1:
            raise RetrievalError(f"z must be ≥ 1 (got z={z})")
        if z >= self.n_users:
            raise RetrievalError(f"z={z} must be smaller than the {self.n_users} indexed users")
        hists = [self._checked_history(h) for h in histories]
        if exclude_users is not None and len(exclude_users) != len(hists):
            raise RetrievalError(f"{len(exclude_users)} excluded users for {len(hists)} histories")
        if not hists:
            return []
        banned = [self.banned(None if exclude_users is None or exclude_users[k] is None else self._user(exclude_users[k]), None)
                  for k in range(len(hists))]
        qvecs = self.history_vectors(hists).astype(np.float32)
        want = min(z + max(int(b.sum()) for b in banned), self.n_users)
        _, idx = self.faiss.search(qvecs, want)
        out = []
        for k, h in enumerate(hists):
            row = idx[k][idx[k] >= 0]
            cf = row[~banned[k][row]][:z].astype(np.int64)
            out.append((self.bm25_top([t for i in h for t in self.item_tokens[i]], z, banned[k]), cf))
        return out

    def similar_users(
        self,
        user: int | str | None = None,
        history: Sequence[int] | None = None,
        z: int = 20,
        v: int = 10,
        exclude_item: int | None = None,
        exclude_user: int | str | None = None,
    ) -> list[Neighbor]:
        """Up to ``v`` similar users of ``user`` (by index or id; itself excluded) or of a raw
        ``history`` (item indices; ``exclude_user`` drops that user, e.g. the history's owner),
        re-ranked in this index's re-rank space (:func:`merge`)."""
        self._check_zv(z, v)
        a, c, rvec = self.candidates(user, history, z, exclude_item, exclude_user)
        cands = union(a, c)
        return merge(a, c, self.rerank_vectors[cands] @ rvec, v) if cands.size else []

    # ---- artifact -----------------------------------------------------------------------------
    def save(self, registry: Registry, name: str, parents: list, params: dict[str, Any]) -> Artifact:
        offsets = np.zeros(self.n_users + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(h) for h in self.train_histories])
        flat = np.fromiter((i for h in self.train_histories for i in h), dtype=np.int64, count=int(offsets[-1]))
        with registry.create("retrieval-index", name, parents=parents, params=params) as w:
            w.write_npz(
                "index.npz",
                **self.bm25.to_arrays(),
                user_vectors=self.user_vectors,
                rerank_vectors=self.rerank_vectors,
                item_vectors=self.item_vectors,
                hist_offsets=offsets,
                hist_items=flat,
                faiss=vec.serialize(self.faiss),
            )
            if self.query_encoder is not None:
                w.write_safetensors("sasrec.safetensors", {k: t.detach().cpu().contiguous() for k, t in self.query_encoder.state_dict().items()})
            vocab = [t for t, _ in sorted(self.bm25.vocab.items(), key=lambda kv: kv[1])]
            w.write_json(
                "retrieval.json",
                {
                    "user_ids": self.user_ids,
                    "item_ids": self.item_ids,
                    "vocab": vocab,
                    "item_tokens": self.item_tokens,
                    "dataset": self.dataset_ref,
                    "index_kind": self.index_kind,
                    "index_params": self.index_params,
                    "user_vectors": self.user_vectors_kind,
                    **({"sasrec": asdict(self.query_encoder.config)} if self.query_encoder is not None else {}),
                },
            )
            w.meta.update({"dataset": self.dataset_ref, "n_users": self.n_users, "vocab": len(vocab), "index_kind": self.index_kind,
                           "user_vectors": self.user_vectors_kind})
        return w.artifact

    @classmethod
    def from_artifact(cls, art: Artifact, dataset_ref: str | None = None) -> "UserRetriever":
        if art.kind != "retrieval-index":
            raise ArtifactCorrupted(f"{art.ref} is a {art.kind!r} artifact, not a retrieval-index")
        info = art.load_json("retrieval.json")
        if dataset_ref and info["dataset"] and info["dataset"] != dataset_ref:
            raise ArtifactIncompatible(f"retrieval index {art.ref} was built from {info['dataset']}, not {dataset_ref}")
        arr = art.load_numpy("index.npz")
        off, flat = arr["hist_offsets"], arr["hist_items"]
        histories = [flat[off[u] : off[u + 1]].tolist() for u in range(len(off) - 1)]
        encoder = None
        if info.get("user_vectors", "item-mean") == "sasrec":
            from components.evaluation.baselines.sasrec import SASRec, SASRecConfig

            encoder = SASRec(SASRecConfig(**info["sasrec"]))
            try:
                encoder.load_state_dict(art.load_safetensors("sasrec.safetensors"))
            except RuntimeError as e:
                raise ArtifactCorrupted(f"{art.ref}: SASRec weights do not fit the stored config: {e}") from None
            encoder.eval()
        return cls(
            SparseBM25.from_arrays(arr, info["vocab"]),
            arr["user_vectors"],
            arr["item_vectors"],
            histories,
            info["item_tokens"],
            info["user_ids"],
            info["dataset"],
            info["index_kind"],
            rerank_vectors=arr["rerank_vectors"],
            faiss_blob=arr["faiss"],
            index_params=info.get("index_params"),
            item_ids=info.get("item_ids"),
            query_encoder=encoder,
        )


class RepresentationCache:
    """LRU cache of users' preference representations, keyed by user, valid for one model artifact:
    asking with another model ref empties it (the representations came from the old model)."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self.model_ref: str | None = None
        self._data: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self.hits = self.misses = 0

    def _use(self, model_ref: str) -> None:
        if model_ref != self.model_ref:
            self._data.clear()
            self.model_ref = model_ref

    def get(self, model_ref: str, key: Hashable, compute) -> np.ndarray:
        self._use(model_ref)
        if key in self._data:
            self.hits += 1
            self._data.move_to_end(key)
            return self._data[key]
        self.misses += 1
        value = compute()
        self._data[key] = value
        if len(self._data) > self.capacity:
            self._data.popitem(last=False)
        return value

    def get_many(self, model_ref: str, keys: Sequence[Hashable], compute: Callable[[list[int]], Sequence[np.ndarray]]) -> list[np.ndarray]:
        """Values for ``keys`` (in order). ``compute(positions)`` gets the positions (into ``keys``)
        of the distinct missing keys and returns their values in that order. Every cached value is
        read *before* anything new is written, so inserting the new values (which may evict old
        ones at capacity) can never drop a value this call still has to return."""
        self._use(model_ref)
        out: list[np.ndarray | None] = [None] * len(keys)
        missing: dict[Hashable, list[int]] = {}
        for i, k in enumerate(keys):
            if k in self._data:
                self.hits += 1
                self._data.move_to_end(k)
                out[i] = self._data[k]
            else:
                missing.setdefault(k, []).append(i)
        if missing:
            values = list(compute([pos[0] for pos in missing.values()]))
            if len(values) != len(missing):
                raise ValueError(f"compute returned {len(values)} values for {len(missing)} keys")
            for (k, pos), value in zip(missing.items(), values):
                self.misses += 1
                for i in pos:
                    out[i] = value
                self._data[k] = value
                self._data.move_to_end(k)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)
        return out  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self._data)

"""The in-memory dataset every loader produces, and its registry artifact.

Indices are internal: item ``i`` is ``item_ids[i]``, user ``u`` is ``user_ids[u]``. A sample is
``(user, history, target)``: the history holds up to ``max_history`` past items, oldest first,
stored in a ``[n, max_history]`` int32 matrix left-aligned and padded with ``PAD = -1``.

Artifact ``dataset/<name>`` files:

- ``items.json``     ``{"ids": [...], "fields": [...], "text": [{field: str}, ...]}``
- ``users.json``     list of external user ids
- ``sequences.npz``  ``offsets`` (int64, n_users+1) and ``items`` (int32): each user's full
                     chronological sequence (CSR)
- ``{train,valid,test}.npz``  ``user`` (int32 [n]), ``history`` (int32 [n, H]), ``target`` (int32 [n])

Item popularity (``train_item_counts``) is the number of training samples whose target is the
item: with sliding windows every training interaction but a user's first is counted exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from components.registry import Artifact, ArtifactCorrupted, Registry

PAD = -1
SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """A data file or dataset is malformed; the message names the file and line where known."""


@dataclass
class Split:
    """Samples of one split."""

    user: np.ndarray  # int32 [n]
    history: np.ndarray  # int32 [n, H], left-aligned, PAD-padded
    target: np.ndarray  # int32 [n]

    def __post_init__(self) -> None:
        self.user = np.asarray(self.user, dtype=np.int32)
        self.history = np.asarray(self.history, dtype=np.int32)
        self.target = np.asarray(self.target, dtype=np.int32)
        n = len(self.target)
        if self.history.ndim != 2 or self.history.shape[0] != n or len(self.user) != n:
            raise DataError(f"inconsistent split shapes: user {self.user.shape}, history {self.history.shape}, target {self.target.shape}")

    def __len__(self) -> int:
        return len(self.target)

    @property
    def lengths(self) -> np.ndarray:
        return (self.history != PAD).sum(axis=1).astype(np.int32)

    def histories(self) -> list[list[int]]:
        return [row[row != PAD].tolist() for row in self.history]

    @classmethod
    def from_lists(cls, users: Iterable[int], histories: Iterable[list[int]], targets: Iterable[int], max_history: int) -> "Split":
        users = list(users)
        histories = list(histories)
        mat = np.full((len(histories), max_history), PAD, dtype=np.int32)
        for i, h in enumerate(histories):
            h = h[-max_history:] if max_history > 0 else []
            mat[i, : len(h)] = h
        return cls(np.asarray(users, dtype=np.int32), mat, np.asarray(list(targets), dtype=np.int32))


@dataclass
class Dataset:
    """Items with text, users' chronological sequences and train/valid/test samples."""

    name: str
    item_ids: list[str]
    item_text: list[dict[str, str]]
    user_ids: list[str]
    sequences: list[list[int]]
    splits: dict[str, Split]
    max_history: int
    text_fields: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ---- checks ---------------------------------------------------------------------------
    def validate(self) -> None:
        n_items, n_users = len(self.item_ids), len(self.user_ids)
        if n_items == 0:
            raise DataError(f"dataset {self.name!r} has no items")
        if len(self.item_text) != n_items:
            raise DataError(f"dataset {self.name!r}: {len(self.item_text)} text records for {n_items} items")
        if len(set(self.item_ids)) != n_items:
            raise DataError(f"dataset {self.name!r}: duplicate item ids")
        if len(self.sequences) != n_users:
            raise DataError(f"dataset {self.name!r}: {len(self.sequences)} sequences for {n_users} users")
        if set(self.splits) != set(SPLITS):
            raise DataError(f"dataset {self.name!r}: splits {sorted(self.splits)} != {list(SPLITS)}")
        if len(self.splits["train"]) == 0:
            raise DataError(f"dataset {self.name!r} has no training samples")
        for name, sp in self.splits.items():
            if len(sp) == 0:
                continue
            if sp.history.shape[1] != self.max_history:
                raise DataError(f"{name}: history width {sp.history.shape[1]} != max_history {self.max_history}")
            if sp.target.min() < 0 or sp.target.max() >= n_items:
                raise DataError(f"{name}: target index outside [0, {n_items})")
            h = sp.history[sp.history != PAD]
            if h.size and (h.min() < 0 or h.max() >= n_items):
                raise DataError(f"{name}: history index outside [0, {n_items})")
            if sp.user.min() < 0 or sp.user.max() >= n_users:
                raise DataError(f"{name}: user index outside [0, {n_users})")

    # ---- views ----------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def item_index(self) -> dict[str, int]:
        return {iid: i for i, iid in enumerate(self.item_ids)}

    def train_item_counts(self) -> np.ndarray:
        """Item popularity: how often each item is a training target (int64 [n_items])."""
        return np.bincount(self.splits["train"].target, minlength=self.n_items).astype(np.int64)

    def train_sequences(self) -> list[list[int]]:
        """Each user's training interactions: the longest train history + target seen for the user,
        extended through all training targets in order (what retrieval may index without leakage)."""
        out: list[list[int]] = [[] for _ in range(self.n_users)]
        sp = self.splits["train"]
        first_seen = np.zeros(self.n_users, dtype=bool)
        for u, row, t in zip(sp.user, sp.history, sp.target):
            if not first_seen[u]:
                out[u].extend(int(x) for x in row[row != PAD])
                first_seen[u] = True
            out[u].append(int(t))
        return out

    # ---- artifact -------------------------------------------------------------------------
    def save(self, registry: Registry, params: dict[str, Any] | None = None, name: str | None = None) -> Artifact:
        offsets = np.zeros(self.n_users + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(s) for s in self.sequences])
        flat = np.fromiter((i for s in self.sequences for i in s), dtype=np.int32, count=int(offsets[-1]))
        with registry.create("dataset", name or self.name, params=params or {}) as w:
            w.write_json("items.json", {"ids": self.item_ids, "fields": self.text_fields, "text": self.item_text})
            w.write_json("users.json", self.user_ids)
            w.write_npz("sequences.npz", offsets=offsets, items=flat)
            for s in SPLITS:
                sp = self.splits[s]
                w.write_npz(f"{s}.npz", user=sp.user, history=sp.history, target=sp.target)
            w.meta.update(
                {
                    "n_items": self.n_items,
                    "n_users": self.n_users,
                    "n_interactions": self.n_interactions,
                    "max_history": self.max_history,
                    **{f"n_{s}": len(self.splits[s]) for s in SPLITS},
                    "source": self.source,
                }
            )
        return w.artifact

    @classmethod
    def from_artifact(cls, art: Artifact) -> "Dataset":
        if art.kind != "dataset":
            raise ArtifactCorrupted(f"{art.ref} is a {art.kind!r} artifact, not a dataset")
        items = art.load_json("items.json")
        seq = art.load_numpy("sequences.npz")
        off, flat = seq["offsets"], seq["items"]
        sequences = [flat[off[u] : off[u + 1]].tolist() for u in range(len(off) - 1)]
        splits = {}
        for s in SPLITS:
            d = art.load_numpy(f"{s}.npz")
            splits[s] = Split(d["user"], d["history"], d["target"])
        return cls(
            name=art.manifest.name,
            item_ids=list(items["ids"]),
            item_text=list(items["text"]),
            user_ids=list(art.load_json("users.json")),
            sequences=sequences,
            splits=splits,
            max_history=int(art.meta.get("max_history", splits["train"].history.shape[1])),
            text_fields=list(items.get("fields", [])),
            source=dict(art.meta.get("source", {})),
        )

    @classmethod
    def load(cls, ref: str, registry: Registry | None = None) -> "Dataset":
        return cls.from_artifact((registry or Registry()).load(ref))


def build_samples(sequences: list[list[int]], times: list[list[float]], max_history: int, split: str, split_ratio) -> dict[str, Split]:
    """One sample per position >= 1 of each user's sequence (history = up to ``max_history`` previous
    items), split ``leave-one-out`` (last target -> test, second last -> valid) or ``time`` (all samples
    sorted by target time, stable, cut by ``split_ratio``). Shared by the table and Amazon loaders."""
    samples: dict[str, tuple[list, list, list]] = {s: ([], [], []) for s in ("train", "valid", "test")}

    def add(s: str, u: int, pos: int) -> None:
        seq = sequences[u]
        samples[s][0].append(u)
        samples[s][1].append(seq[max(0, pos - max_history) : pos])
        samples[s][2].append(seq[pos])

    if split == "leave-one-out":
        for u, seq in enumerate(sequences):
            n = len(seq)
            if n >= 2:
                add("test", u, n - 1)
            if n >= 3:
                add("valid", u, n - 2)
            for pos in range(1, n - 2):
                add("train", u, pos)
    elif split == "time":
        if abs(sum(split_ratio) - 1.0) > 1e-6 or min(split_ratio) < 0:
            raise DataError(f"split_ratio {split_ratio} must be non-negative and sum to 1")
        order = sorted(((times[u][pos], u, pos) for u in range(len(sequences)) for pos in range(1, len(sequences[u]))), key=lambda s: s[0])
        n = len(order)
        n_train, n_valid = int(round(n * split_ratio[0])), int(round(n * split_ratio[1]))
        for k, (_, u, pos) in enumerate(order):
            add("train" if k < n_train else "valid" if k < n_train + n_valid else "test", u, pos)
    else:
        raise DataError(f"unknown split {split!r} (leave-one-out | time)")
    return {s: Split.from_lists(*v, max_history=max_history) for s, v in samples.items()}

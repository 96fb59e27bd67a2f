"""Sample statistics of a dataset (``genrec data stats REF``), written as a DVC metric."""

from __future__ import annotations

from typing import Any

import numpy as np

from components.data.dataset import SPLITS, Dataset


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0 = all equal, → 1 = one holds everything)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = v.size
    if n == 0 or v.sum() == 0:
        return 0.0
    cum = np.cumsum(v)
    return float((n + 1 - 2 * (cum / cum[-1]).sum()) / n)


def dataset_stats(ds: Dataset, head_share: float = 0.2) -> dict[str, Any]:
    full = np.bincount(np.fromiter((i for s in ds.sequences for i in s), dtype=np.int64), minlength=ds.n_items)
    train = ds.train_item_counts()
    n_head = max(1, int(round(head_share * ds.n_items)))

    def head_share_of(counts: np.ndarray) -> float:
        total = counts.sum()
        return float(np.sort(counts)[::-1][:n_head].sum() / total) if total else 0.0

    lengths = np.array([len(s) for s in ds.sequences], dtype=np.int64)
    hist = ds.splits["train"].lengths
    n_inter = int(full.sum())
    return {
        "dataset": ds.name,
        "users": ds.n_users,
        "items": ds.n_items,
        "interactions": n_inter,
        "sparsity": float(1.0 - n_inter / (ds.n_users * ds.n_items)) if ds.n_users else 1.0,
        "samples": {s: len(ds.splits[s]) for s in SPLITS},
        "max_history": ds.max_history,
        "head_share": head_share,
        "head_interaction_share": head_share_of(full),
        "head_train_target_share": head_share_of(train),
        "tail_interaction_share": 1.0 - head_share_of(full),
        "item_popularity_gini": gini(full),
        "items_without_train_target": int((train == 0).sum()),
        "test_targets_unseen_in_train": int((train[ds.splits["test"].target] == 0).sum()),
        "user_sequence_length": {
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
        },
        "train_history_length_hist": {str(k): int(v) for k, v in zip(*np.unique(hist, return_counts=True))},
    }


def format_stats(s: dict[str, Any]) -> str:
    lines = [
        f"dataset            {s['dataset']}",
        f"users              {s['users']:,}",
        f"items              {s['items']:,}",
        f"interactions       {s['interactions']:,}",
        f"sparsity           {s['sparsity']:.5f}",
        "samples            " + " / ".join(f"{k} {v:,}" for k, v in s["samples"].items()),
        f"head {int(s['head_share'] * 100)}% items hold {s['head_interaction_share']:.1%} of interactions "
        f"({s['head_train_target_share']:.1%} of training targets); tail {s['tail_interaction_share']:.1%}",
        f"item popularity Gini {s['item_popularity_gini']:.3f}",
        f"test targets never a training target: {s['test_targets_unseen_in_train']:,}",
        "user sequence length " + ", ".join(f"{k} {v:g}" for k, v in s["user_sequence_length"].items()),
        "train history lengths " + " ".join(f"{k}:{v}" for k, v in s["train_history_length_hist"].items()),
    ]
    return "\n".join(lines)

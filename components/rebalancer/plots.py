"""Figures of token popularity before/after rebalancing (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np


def plot_popularity(before: Sequence[np.ndarray], after: Sequence[np.ndarray], levels: Sequence[int], path: str | Path,
                    title: str = "token popularity before / after CRAB") -> Path:
    """One panel per level: used tokens' popularity sorted descending (log y), before vs after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(levels)
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 3.4), squeeze=False)
    for ax, lvl in zip(axes[0], levels):
        for arr, label, style in ((before[lvl], "before", "-"), (after[lvl], "after", "--")):
            a = np.sort(np.asarray(arr)[np.asarray(arr) > 0])[::-1]
            ax.plot(np.arange(1, a.size + 1), a, style, label=f"{label} (max {a.max() if a.size else 0}, {a.size} tokens)")
        ax.set_yscale("log")
        ax.set_xlabel("token rank")
        ax.set_ylabel("popularity (training interactions)")
        ax.set_title(f"level {lvl}")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_popularity_csv(before: Sequence[np.ndarray], after: Sequence[np.ndarray], levels: Sequence[int], path: str | Path) -> Path:
    """Rows ``level, rank, before, after`` (sorted descending, blank where a side has fewer tokens)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["level", "rank", "before", "after"])
        for lvl in levels:
            b = np.sort(np.asarray(before[lvl])[np.asarray(before[lvl]) > 0])[::-1]
            a = np.sort(np.asarray(after[lvl])[np.asarray(after[lvl]) > 0])[::-1]
            for i in range(max(b.size, a.size)):
                w.writerow([lvl, i + 1, int(b[i]) if i < b.size else "", int(a[i]) if i < a.size else ""])
    return path

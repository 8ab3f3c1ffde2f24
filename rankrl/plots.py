"""Every PNG rankrl writes goes through here: curves against step, annotated heatmaps, written atomically.

matplotlib loads lazily (the Agg backend, no screen needed); the figure is always closed, even when the write fails.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rankrl.atomic import atomic_write


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_fig(fig: Any, out: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    plt = pyplot()
    try:
        return atomic_write(Path(out), lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)


def annotated_heatmap(grid: Any, row_labels: Sequence[str], col_labels: Sequence[str], out: str | os.PathLike, *,
                      title: str = "", vmax: float | None = None, label: str = "rank", xlabel: str = "",
                      fontsize: int = 7, cell: tuple[float, float] = (0.7, 0.3)) -> Path:
    """Heatmap of ``grid`` (rows x columns; NaN cells left blank), colour scale 0..``vmax`` (default: the grid's
    max), every finite cell annotated with its value; atomic PNG."""
    import numpy as np

    plt = pyplot()
    grid = np.asarray(grid, dtype=float)
    fig, ax = plt.subplots(figsize=(1.5 + cell[0] * len(col_labels), 1.2 + cell[1] * len(row_labels)))
    top = float(vmax or max(np.nanmax(grid) if np.isfinite(grid).any() else 0.0, 1.0))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=top)
    for (i, j), v in np.ndenumerate(grid):
        if math.isfinite(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=fontsize, color="w" if v < top / 2 else "k")
    ax.set_xticks(range(len(col_labels)), list(col_labels))
    ax.set_yticks(range(len(row_labels)), list(row_labels), fontsize=fontsize)
    if xlabel:
        ax.set_xlabel(xlabel)
    fig.colorbar(im, ax=ax, label=label)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return save_fig(fig, out)


def plot_curves(
    rows: Iterable[Mapping[str, Any]], keys: Iterable[str], out: str | os.PathLike, title: str = ""
) -> Path:
    """One subplot per metric key against ``step``; written atomically as a PNG."""
    plt = pyplot()
    rows, keys = list(rows), [k for k in keys]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3)
        ax.set_title(key)
        ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_fig(fig, out, dpi=100)

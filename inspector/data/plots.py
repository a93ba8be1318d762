"""The figures people look at (ROC curves), drawn once for the cv PNG and the HTML report alike."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from inspector.data import metrics


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display on a station)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def png_uri(png: bytes) -> str:
    """PNG bytes as a data: URI, for a page that carries its images (the report, the status page's trends)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def roc_figure(y: np.ndarray, curves: dict[str, np.ndarray], title: str, size: float = 5.0, dpi: int = 100,
               legend_size: float | None = None) -> Any | None:
    """One ROC curve per name (its AUC in the legend) over the chance line; None when a class is missing."""
    if not ((y == 1).any() and (y == 0).any()):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(size, size), dpi=dpi)
    for name, p in curves.items():
        fpr, tpr, _ = metrics.roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {metrics.roc_auc(y, p):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate (normal flagged)", ylabel="true positive rate (abnormal recall)",
           title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=legend_size)
    fig.tight_layout()
    return fig

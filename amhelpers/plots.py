"""Plot helpers shared by the notebooks: Ethiopic glyphs and small standard figures."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .io import atomic_write

ETHIOPIC_FONTS = ("Abyssinica SIL", "Noto Sans Ethiopic", "Noto Serif Ethiopic")


def use_ethiopic_font() -> str | None:
    """Make matplotlib draw Ethiopic glyphs, with DejaVu Sans for Latin text (font fallback).

    Returns:
        The Ethiopic font family found, or None (install ``fonts-sil-abyssinica``; glyphs then
        show as boxes).
    """
    import matplotlib
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    found = next((name for name in ETHIOPIC_FONTS if name in names), None)
    if found is None:
        for path in font_manager.findSystemFonts():
            if "abyssinica" in path.lower() or "ethiopic" in path.lower():
                font_manager.fontManager.addfont(path)
                found = font_manager.FontProperties(fname=path).get_name()
                break
    if found:
        matplotlib.rcParams["font.family"] = ["DejaVu Sans", found]
    return found


def bar_compare(ax, labels: Sequence[str], series: Mapping[str, Sequence[float]], ylabel: str,
                title: str) -> None:
    """Grouped bars: one group per label, one bar per series, values written on the bars."""
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()


def show(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` as a PNG, close it and display the image in the notebook.

    Under a non-interactive backend (``MPLBACKEND=Agg``, as in CI) a figure left at the end of a
    cell never reaches the notebook; an image always does, and the file stays next to the run.

    Args:
        fig: a matplotlib figure.
        path: the PNG to write (atomically).

    Returns:
        The path written.
    """
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    display(Image(filename=str(path)))
    return path

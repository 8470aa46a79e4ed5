"""Plot helpers shared by the notebooks: Ethiopic glyphs and small standard figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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

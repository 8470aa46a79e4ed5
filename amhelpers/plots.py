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


def ranges(ax, groups: Mapping[tuple, Sequence[float]], order: Sequence[str],
           series: Mapping[object, str], ylabel: str, marker: str = "o",
           filled: bool = True) -> None:
    """Per category of ``order`` (x) and per series (side by side), the mean of a group's
    values as a marker and their range as a vertical bar; ``groups`` maps ``(category,
    series_key)`` to values (:func:`amhelpers.runs.values_by`), ``series`` a key to its label."""
    width = 0.6 / max(len(series), 1)
    for k, (key, label) in enumerate(series.items()):
        labelled = False  # one legend entry per series, on its first drawn group
        for i, category in enumerate(order):
            values = groups.get((category, key))
            if not values:
                continue
            x = i + (k - (len(series) - 1) / 2) * width
            mean = sum(values) / len(values)
            ax.vlines(x, min(values), max(values), color=f"C{k}", lw=2)
            ax.plot(x, mean, marker, color=f"C{k}", mfc=f"C{k}" if filled else "none",
                    label=None if labelled else label)
            labelled = True
    ax.set_xticks(range(len(order)), order, rotation=20)
    ax.set_ylabel(ylabel)


def retention_front(ax, rows: Sequence[Mapping], base_mcd: float, front: Sequence[str],
                    margin: float, label: str = "") -> None:
    """Target-language against English MCD / random codes, one marker per run (lower is better
    on both axes), the front's runs joined by a line, the base model's English as a dotted line
    and the goal (``margin`` above it) as a band; ``label`` prefixes the legend entries."""
    ax.axvspan(base_mcd, base_mcd + margin, color="C2", alpha=0.15,
               label=f"{label}goal: base English + {margin:g}")
    ax.axvline(base_mcd, color="C2", ls=":", label=f"{label}base model's English")
    for r in rows:
        on = r["run"] in front
        ax.plot(r["eng_mcd_vs_random"], r["amh_mcd_vs_random"], "o" if on else "x",
                color="C3" if on else "C7")
        ax.annotate(r["run"], (r["eng_mcd_vs_random"], r["amh_mcd_vs_random"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    line = sorted((r for r in rows if r["run"] in front), key=lambda r: r["eng_mcd_vs_random"])
    ax.plot([r["eng_mcd_vs_random"] for r in line], [r["amh_mcd_vs_random"] for r in line],
            "-", color="C3", alpha=0.6, label=f"{label}front")
    ax.set(xlabel="English MCD / random (retention; lower is better)",
           ylabel="target MCD / random (acquisition; lower is better)")


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


def play_samples(samples: Sequence[Mapping], rate: int = 16000) -> None:
    """Labelled audio players: per sentence its text, the reference, then each run's output.

    Args:
        samples: :func:`amhelpers.embedded.samples` (``text``, ``reference`` {``wav``},
            ``runs`` {name: {``wav``, ``n_gen``, ``n_ref``}}).
        rate: sample rate of the waveforms.
    """
    from IPython.display import Audio, Markdown, display

    for i, sample in enumerate(samples):
        text = sample["text"]
        display(Markdown(f"**Sentence {i + 1}:** {text}"))
        print("espeak-ng reference")
        display(Audio(sample["reference"]["wav"], rate=rate),
                metadata={"label": f"espeak-ng reference: {text}"})
        for name, run in sample["runs"].items():
            print(f"{name}: {run['n_gen']} codes (reference {run['n_ref']})")
            display(Audio(run["wav"], rate=rate), metadata={"label": f"{name}: {text}"})


def spectrograms(samples: Sequence[Mapping], frames_per_second: float,
                 path: str | os.PathLike) -> Path:
    """One row of log-mel spectrograms per source (the reference, then each run), one column
    per sentence, each panel on its own time axis; saved to ``path`` and shown."""
    import matplotlib.pyplot as plt

    use_ethiopic_font()
    names = ["espeak-ng", *samples[0]["runs"]]
    fig, axes = plt.subplots(len(names), len(samples), figsize=(4.3 * len(samples), 1.9 * len(names)),
                             squeeze=False)
    for col, sample in enumerate(samples):
        text = sample["text"] if len(sample["text"]) <= 28 else sample["text"][:28] + "…"
        for row, name in enumerate(names):
            mel = sample["reference"]["mel"] if row == 0 else sample["runs"][name]["mel"]
            ax = axes[row, col]
            ax.imshow(mel.T, origin="lower", aspect="auto",
                      extent=(0, len(mel) / frames_per_second, 0, mel.shape[1]))
            ax.set_title(f"{name}: {text}", fontsize=8)
            ax.set(xlabel="s" if row == len(names) - 1 else None,
                   ylabel="mel bin" if col == 0 else None)
    fig.tight_layout()
    return show(fig, path)

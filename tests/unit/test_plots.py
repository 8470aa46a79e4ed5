"""plots.show: the figure reaches the notebook as an image whatever the backend."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from IPython.display import Image  # noqa: E402

from amhelpers import plots  # noqa: E402


def test_show_writes_png_closes_figure_and_displays_it(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = plots.show(fig, tmp_path / "sub" / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.number not in plt.get_fignums()  # closed: inline backends will not draw it twice
    assert len(shown) == 1 and isinstance(shown[0], Image) and shown[0].data == path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["loss.png"]  # no temporary file left

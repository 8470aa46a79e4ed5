"""Chapter 6b on the quick profile: the retention levers through chapter 5's runner, and what
holds there already: English replay and LoRA adapters keep English closer to the base than the
fix without them, and training new rows only leaves English exactly where the base model had it."""

from __future__ import annotations

import json

import pytest

from amhelpers import embedded, retention, runs
from amhelpers.course import NOTEBOOKS

pm = pytest.importorskip("papermill")


@pytest.mark.slow
def test_chapter6b_replay_keeps_english_closer_to_the_base(hornmt_dir, course_home, tmp_path,
        printed_warnings):
    pm.execute_notebook(str(NOTEBOOKS / "06b_retention.ipynb"), str(tmp_path / "06b.ipynb"),
                        parameters={"PROFILE": "quick"}, kernel_name="python3",
                        cwd=str(NOTEBOOKS), progress_bar=False)
    assert printed_warnings(tmp_path / "06b.ipynb") == []  # its grid kernels print none
    p = embedded.profile("quick")
    summary = json.loads((course_home / "ch06b" / embedded.run_name(p) / "summary.json")
                         .read_text())
    assert summary["failed"] == []
    rows = {r["run"]: r for r in summary["rows"]}
    assert set(rows) == {retention.label(x) for x in
                         runs.read_grid(runs.GRIDS / "retention_quick.yaml")}
    base = summary["base_english"]["val_mel_loss"]

    def forgot(run: str) -> float:
        return rows[run]["eng_val_mel_loss"] - base

    # 40 steps move English val mel loss up by 0.764-0.769 under the fix and by 0.169-0.196 with
    # a quarter of every batch English (quick, fine-tune seeds 0-2, so a margin of 0.57-0.60;
    # tests/functional/replay_margins.py, the same runs notebook 05 makes).
    assert forgot("fix") > 0.3
    assert forgot("fix") - forgot("fix, replay 0.25") > 0.3
    # LoRA adapters (rank 8) at the fix's backbone rate instead of the blocks: English rises by
    # 0.117-0.122 (the same seeds: a margin of 0.64-0.65 to the fix).
    assert forgot("fix") - forgot("fix, LoRA rank 8") > 0.3
    # New rows only: the backbone's rate is 0 and the base rows are frozen exactly, so English
    # text reaches the same weights as in the base model.
    assert forgot("fix, new rows only") == pytest.approx(0.0, abs=1e-5)
    # The front and the recommendation come from these rows and from the committed full grid.
    assert set(summary["front"]) <= set(rows) and summary["recommended"] in rows
    committed = json.loads((runs.RESULTS / "retention_full.json").read_text())
    assert summary["full"]["recommended"] in {r["run"] for r in committed["rows"]}

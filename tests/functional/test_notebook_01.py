"""Run chapter 1 with papermill and check the numbers it reports (recommenders-style)."""

import json

import pytest

from amhelpers.course import NOTEBOOKS

pm = pytest.importorskip("papermill")


def test_chapter1_numbers(hornmt_dir, tmp_path):
    out_dir = tmp_path / "ch01"
    pm.execute_notebook(str(NOTEBOOKS / "01_tokenizer.ipynb"), str(tmp_path / "01.ipynb"),
                        parameters={"OUT_DIR": str(out_dir), "PROFILE": "quick"},
                        kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False)
    summary = json.loads((out_dir / "summary.json").read_text())
    ours, naive = summary["extended"], summary["naive"]
    assert ours["ok"] and ours["unk_rate"] == 0.0 and ours["base_ids_stable"]
    assert ours["base_text_identical"] and ours["fertility_extended"] < ours["fertility_base"]
    assert not naive["ok"] and naive["unk_rate"] > 0.1
    assert summary["embedded"]["ok"] and summary["embedded"]["n_base"] == 500
    # section 6: IndexTTS2's front end routes Ethiopic lines to its Chinese normaliser, and its
    # tokenizer (where the extra is installed) reads digits and punctuation differently
    front = summary["front_end"]
    assert front["chinese_route"] > 0.9 * front["lines"]
    try:
        from amhelpers.indextts import load_front_end

        load_front_end()
    except ImportError:
        assert front["differ"] is None
    else:
        assert 0 < front["differ"] < front["lines"]

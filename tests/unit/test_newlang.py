"""amhelpers.newlang: the extend-or-keep rule, and coverage of Tigrinya by an Amharic extension."""

from __future__ import annotations

import pytest

from amhelpers import corpus, newlang
from amhelpers import tokenizer as tk


@pytest.mark.parametrize("unk_before, unk_after, fert_before, fert_after, extend", [
    (0.48, 0.0, 4.8, 2.7, True),     # a new script: <unk> removed
    (0.0, 0.0, 5.5, 5.5, False),     # letters covered, nothing shorter: keep
    (0.0, 0.0, 4.0, 2.9, True),      # 27.5% shorter sequences
    (0.0, 0.0, 4.0, 3.1, False),     # 22.5% shorter: under the 25% gain
    (0.01, 0.01, 5.0, 5.0, False),   # <unk> the extension cannot remove
])
def test_decide(unk_before, unk_after, fert_before, fert_after, extend):
    decided, reason = newlang.decide(unk_before, unk_after, fert_before, fert_after)
    assert decided is extend and reason


def test_tigrinya_reuses_the_amharic_extension(hornmt_dir, tmp_path):
    base = tmp_path / "eng.model"
    tk.train_base(corpus.split_lines("eng", "train"), "eng", 300, base)
    amh = tmp_path / "eng+amh.model"
    tk.extend(base, corpus.split_lines("amh", "train"), "amh", 600, amh)
    tir_test = corpus.split_lines("tir", "test")
    c = newlang.coverage(base, amh, tir_test, "tir")
    assert c["unk_base"] > 0.3 and c["unk_extended"] < 0.001   # the script is covered
    assert c["trained_share"] > 0.8                              # on rows Amharic trained
    again = newlang.assess(amh, corpus.split_lines("tir", "train"), tir_test, "tir", 600,
                           tmp_path / "eng+amh+tir.model")
    assert again["n_added"] <= 5  # only characters Amharic's text lacked
    fresh = newlang.assess(base, corpus.split_lines("tir", "train"), tir_test, "tir", 600,
                           tmp_path / "eng+tir.model")
    assert fresh["extend"] and fresh["fertility_extended"] < c["fertility_extended"]
    oromo = newlang.assess(base, corpus.split_lines("orm", "train"), corpus.split_lines("orm", "test"),
                           "orm", 600, tmp_path / "eng+orm.model")
    assert not oromo["extend"] and oromo["n_added"] <= 5 and oromo["unk_base"] < 0.001

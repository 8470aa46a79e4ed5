"""Extend and verify the real IndexTTS2 bpe.model with HornMT Amharic (chapter 1's claim)."""

import json
import time

from amhelpers import corpus
from amhelpers import tokenizer as tk
from amhelpers.__main__ import main


def test_extend_real_indextts2_tokenizer(indextts2_dir, hornmt_dir, tmp_path, capsys):
    base = indextts2_dir / "bpe.model"
    proto = tk.load_proto(base)
    assert len(proto.pieces) == 12000 and tk.model_type(proto) == "unigram"
    assert proto.normalizer_spec.name == "nmt_nfkc" and not proto.trainer_spec.byte_fallback

    out = tmp_path / "amharic_extended_bpe.model"
    start = time.perf_counter()
    assert main(["tokenizer", "extend", "--base", str(base), "--corpus", "amh",
                 "--vocab-size", "12000", "--out", str(out), "--json"]) == 0
    extend_report = json.loads(capsys.readouterr().out)
    assert main(["tokenizer", "verify", "--base", str(base), "--extended", str(out),
                 "--text", "amh", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    seconds = time.perf_counter() - start
    print(f"\nIndexTTS2 extension: {extend_report['n_added']} pieces added in {seconds:.1f} s; "
          f"<unk> {report['unk_rate_base']:.3f} -> {report['unk_rate']:.3f}; fertility "
          f"{report['fertility_base']:.2f} -> {report['fertility_extended']:.2f}")

    assert report["ok"], report["problems"]
    assert report["n_base"] == 12000 and report["n_added"] == extend_report["n_added"] > 3000
    assert report["unk_rate"] == 0.0 and report["unk_rate_base"] > 0.4
    assert report["base_ids_stable"] and report["base_text_identical"] and report["base_text_lines"] > 50
    assert report["base_text_case"] == "upper"
    assert report["fertility_extended"] < report["fertility_base"]
    assert report["unreachable_added"] == []
    # the real user-defined pieces (CJK, pinyin, tags) are untouched
    ext = tk.load_proto(out)
    assert sum(p.type == tk.USER_DEFINED for p in ext.pieces) == sum(
        p.type == tk.USER_DEFINED for p in proto.pieces) > 10000


def test_naive_extension_of_real_tokenizer_leaves_unk(indextts2_dir, hornmt_dir, tmp_path):
    out = tmp_path / "naive.model"
    tk.extend(indextts2_dir / "bpe.model", corpus.split_lines("amh", "train"), "amh", 12000, out,
              naive=True)
    report = tk.verify(indextts2_dir / "bpe.model", out, corpus.split_lines("amh", "test"), "amh")
    assert not report["ok"] and report["unk_rate"] > 0.1

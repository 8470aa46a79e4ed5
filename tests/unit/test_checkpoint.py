"""Checkpoint layouts (MiniVoice, IndexTTS2 gpt.pth) and growing the text tables.

Tiny state dicts built here: a "pretrained" table whose base rows are trained (structured,
norms ~2) plus two untrained control rows and the untrained "+1" row.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from amhelpers import checkpoint as ck
from amhelpers import ckptio, tables
from amhelpers import tokenizer as tk
from amhelpers.io import sha256_file

D = 16
CONTROL_ROWS = (3, 4)
CORPUS = ("selam bet lemma hagere abeba gize sew wuha dabo buna the quick brown fox jumps "
          "over a lazy dog while six big jackals quietly vexed my wizard")
WORDS = CORPUS.split()


def pretrained_tables(base: int, d: int = D, seed: int = 0) -> dict[str, torch.Tensor]:
    """Trained-looking text tables with ``base + 1`` rows (rows 3, 4 and ``base`` untrained)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(base, 6, generator=g) @ torch.randn(6, d, generator=g) / math.sqrt(6)
    emb = 0.5 * low + 0.1 * torch.randn(base, d, generator=g)
    head = 0.4 * (torch.randn(base, 6, generator=g) @ torch.randn(6, d, generator=g)) / math.sqrt(6)
    bias = -1.0 + 0.3 * torch.randn(base, generator=g)
    bound = 1 / math.sqrt(d)
    fresh_emb = 0.02 * torch.randn(len(CONTROL_ROWS) + 1, d, generator=g)
    fresh_head = (torch.rand(len(CONTROL_ROWS) + 1, d, generator=g) * 2 - 1) * bound
    fresh_bias = (torch.rand(len(CONTROL_ROWS) + 1, generator=g) * 2 - 1) * bound
    for k, r in enumerate(CONTROL_ROWS):
        emb[r], head[r], bias[r] = fresh_emb[k], fresh_head[k], fresh_bias[k]
    return {"text_embedding.weight": torch.cat([emb, fresh_emb[-1:]]),
            "text_head.weight": torch.cat([head, fresh_head[-1:]]),
            "text_head.bias": torch.cat([bias, fresh_bias[-1:]])}


def indextts_state_dict(base: int, d: int = D) -> dict[str, torch.Tensor]:
    """Real UnifiedVoice key names at reduced width, plus inference_model.* copies."""
    sd = pretrained_tables(base, d)
    sd.update({
        "conditioning_encoder.embed.conv.0.weight": torch.randn(d, 1, 3, 3),
        "gpt.h.0.attn.c_attn.weight": torch.randn(d, 3 * d),
        "mel_embedding.weight": torch.randn(30, d) * 0.02,
        "mel_pos_embedding.emb.weight": torch.randn(40, d) * 0.02,
        "text_pos_embedding.emb.weight": torch.randn(20, d) * 0.02,
        "final_norm.weight": torch.ones(d),
        "mel_head.weight": torch.randn(30, d),
        "mel_head.bias": torch.zeros(30),
        "inference_model.transformer.h.0.attn.c_attn.weight": torch.randn(d, 3 * d),
        "inference_model.lm_head.1.weight": torch.randn(30, d),
    })
    return sd


def minivoice_payload(base: int, d: int = D) -> dict:
    sd = pretrained_tables(base, d)
    sd["mel_head.weight"] = torch.randn(18, d)
    return {"format": ckptio.MINIVOICE_FORMAT,
            "config": {"number_text_tokens": base, "number_mel_codes": 18, "model_dim": d},
            "model": sd, "meta": {"step": 7, "tokenizer": "base.model"},
            "train_state": {"optimizer": {"state": {}, "param_groups": []}, "step": 7}}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """A tiny unigram base trained on Latin text, and an extension with Ethiopic pieces."""
    folder = tmp_path_factory.mktemp("tok")
    lines = [" ".join(WORDS[i:i + 6]) for i in range(len(WORDS) - 5)] * 4
    proto = tk.train_sentencepiece(lines, 60, "unigram")
    base_path = folder / "base.model"
    base_path.write_bytes(proto.SerializeToString())
    ext = sp_pb2.ModelProto()
    ext.CopyFrom(proto)
    low = min(p.score for p in proto.pieces) - 1
    # romanise to text the base knows; the last two fall back to the mean
    for k, piece in enumerate(["\u2581ሰላም", "ቤት", "ሰ", "ж", "\u135d"]):
        new = ext.pieces.add()
        new.piece, new.score, new.type = piece, low - k, tk.NORMAL
    ext.trainer_spec.vocab_size = len(ext.pieces)
    ext_path = folder / "ext.model"
    ext_path.write_bytes(ext.SerializeToString())
    return base_path, ext_path, len(proto.pieces), len(ext.pieces)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    ck.add_arguments(parser)
    return ck.run(parser.parse_args(argv))


# ----------------------------------------------------------------------------- layouts
def test_load_minivoice_layout_and_save_roundtrip(tmp_path):
    path = tmp_path / "mini.pt"
    torch.save(minivoice_payload(40), path)
    sd, meta = ckptio.load_state_dict(path)
    assert meta["layout"] == "minivoice" and meta["nested"] and meta["rows"] == 41
    assert meta["config"]["number_text_tokens"] == 40 and "train_state" in meta["left_out"]
    out = ckptio.save_state_dict(tmp_path / "copy.pt", sd, meta)
    raw = torch.load(out, weights_only=True)
    assert raw["format"] == ckptio.MINIVOICE_FORMAT and raw["meta"]["step"] == 7
    assert "train_state" not in raw
    assert torch.equal(raw["model"]["text_head.bias"], sd["text_head.bias"])


@pytest.mark.parametrize("nested", [False, True])
def test_load_indextts2_layout_drops_inference_model(tmp_path, nested):
    sd0 = indextts_state_dict(50)
    payload = {"model": sd0, "step": 1234, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}}} \
        if nested else sd0
    path = tmp_path / "gpt.pth"
    torch.save(payload, path)
    sd, meta = ckptio.load_state_dict(path)
    assert meta["layout"] == "indextts2" and meta["nested"] is nested
    assert not any(k.startswith("inference_model.") for k in sd)
    assert len(meta["dropped_keys"]) == 2 and meta["rows"] == 51 and meta["dim"] == D
    if nested:
        assert meta["extra"] == {"step": 1234} and meta["left_out"] == ["optimizer"]
    ckptio.save_state_dict(tmp_path / "out.pth", sd, meta)
    raw = torch.load(tmp_path / "out.pth", weights_only=True)
    keys = raw["model"] if nested else raw
    assert set(keys) == set(sd) and (raw["step"] == 1234 if nested else True)


def test_compile_prefix_is_stripped_and_restored(tmp_path):
    sd0 = {"_orig_mod." + k: v for k, v in indextts_state_dict(20).items()}
    torch.save({"model": sd0}, tmp_path / "c.pth")
    sd, meta = ckptio.load_state_dict(tmp_path / "c.pth")
    assert meta["prefix"] == "_orig_mod." and "text_embedding.weight" in sd
    ckptio.save_state_dict(tmp_path / "d.pth", sd, meta)
    assert "_orig_mod.text_head.bias" in torch.load(tmp_path / "d.pth", weights_only=True)["model"]


def test_minivoice_checkpoint_from_model_module(tmp_path, tokenizers):
    """A real MiniVoice checkpoint grows and loads back into MiniVoice."""
    from amhelpers.model import MiniVoice, MiniVoiceConfig, load_checkpoint, save_checkpoint

    base_path, ext_path, n_base, n_ext = tokenizers
    torch.manual_seed(0)
    model = MiniVoice(MiniVoiceConfig(number_text_tokens=n_base, number_mel_codes=18, model_dim=16,
                                      layers=1, heads=2, max_text_tokens=10, max_mel_tokens=10))
    save_checkpoint(tmp_path / "m.pt", model, step=3)
    assert cli(["extend", "--checkpoint", str(tmp_path / "m.pt"), "--base-tokenizer", str(base_path),
                "--tokenizer", str(ext_path), "--init", "indextts", "--out", str(tmp_path / "g.pt")]) == 0
    grown, meta = load_checkpoint(tmp_path / "g.pt")
    assert grown.config.number_text_tokens == n_ext
    assert meta["extension"]["added_rows"]["count"] == n_ext - n_base
    assert torch.equal(grown.text_embedding.weight[:n_base], model.text_embedding.weight[:n_base])


# ----------------------------------------------------------------------------- errors
def test_missing_and_corrupted_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ckptio.load_state_dict(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a torch file at all")
    with pytest.raises(ValueError, match=r"bad\.pth cannot be read: it is a text file.*not a torch checkpoint"):
        ckptio.load_state_dict(bad)
    truncated = tmp_path / "trunc.pth"
    torch.save(indextts_state_dict(10), tmp_path / "full.pth")
    truncated.write_bytes((tmp_path / "full.pth").read_bytes()[:500])
    with pytest.raises(ValueError, match=r"trunc\.pth cannot be read: it is truncated or damaged"):
        ckptio.load_state_dict(truncated)


def test_checkpoint_without_text_tables(tmp_path):
    torch.save({"mel_head.weight": torch.zeros(3, 4), "gpt.h.0.ln_1.weight": torch.ones(4)},
               tmp_path / "mel.pth")
    with pytest.raises(ValueError) as err:
        ckptio.load_state_dict(tmp_path / "mel.pth")
    msg = str(err.value)
    assert "mel.pth" in msg and "text_embedding.weight" in msg and "mel_head.weight" in msg


def test_row_count_must_match_tokenizer(tmp_path, tokenizers):
    base_path, ext_path, n_base, _ = tokenizers
    torch.save(indextts_state_dict(n_base + 7), tmp_path / "gpt.pth")
    with pytest.raises(ValueError) as err:
        ck.extend_checkpoint(tmp_path / "gpt.pth", base_path, ext_path, tmp_path / "out.pth")
    msg = str(err.value)
    assert str(n_base + 8) in msg and str(n_base + 1) in msg and "base.model" in msg
    with pytest.raises(ValueError, match="larger than the base"):
        ck.grow_text_tables(pretrained_tables(10), 10, 10)
    with pytest.raises(ValueError, match="strategy"):
        ck.grow_text_tables(pretrained_tables(10), 10, 12, "zeros")
    with pytest.raises(ValueError, match="romanized needs"):
        ck.grow_text_tables(pretrained_tables(10), 10, 12, "romanized")
    with pytest.raises(ValueError, match="not an extension"):
        ck.extend_checkpoint(tmp_path / "gpt.pth", ext_path, base_path, tmp_path / "out.pth")


# ----------------------------------------------------------------------------- growing
@pytest.mark.parametrize("strategy", ck.STRATEGIES)
def test_grow_each_strategy(strategy, tokenizers):
    base_path, ext_path, n_base, n_ext = tokenizers
    sd = indextts_state_dict(n_base)
    kw = {"tokenizer": ext_path, "base_tokenizer": base_path} if strategy == "romanized" else {}
    grown, record = ck.grow_text_tables(sd, n_base, n_ext, strategy, seed=3, **kw)
    assert grown["mel_head.weight"] is sd["mel_head.weight"]
    for key in tables.TEXT_KEYS:
        old, new = sd[key], grown[key]
        assert new.shape[0] == n_ext + 1 and new.shape[1:] == old.shape[1:] and new.dtype == old.dtype
        assert torch.equal(new[:n_base], old[:n_base])          # base rows bit-identical
        assert torch.equal(new[n_ext], old[n_base])              # the +1 row moved to the end
        assert torch.isfinite(new).all()
    assert record["plus_one_row"]["from"] == n_base and record["plus_one_row"]["to"] == n_ext
    assert record["added_rows"] == {"start": n_base, "stop": n_ext, "count": n_ext - n_base}
    assert record["strategy"] == strategy and record["seed"] == 3
    # the two control rows are detected and kept out of the statistics
    assert set(CONTROL_ROWS) <= set(record["stat_rows_excluded"])
    assert len(record["stat_rows_excluded"]) <= 4
    again, _ = ck.grow_text_tables(sd, n_base, n_ext, strategy, seed=3, **kw)
    assert all(torch.equal(again[k], grown[k]) for k in tables.TEXT_KEYS)   # deterministic

    emb = grown["text_embedding.weight"][n_base:n_ext]
    used = [i for i in range(n_base) if i not in record["stat_rows_excluded"]]
    mean = sd["text_embedding.weight"][used].mean(0)
    if strategy == "indextts":
        assert emb.norm(dim=1).mean() < 0.2                          # 0.02 * sqrt(16) = 0.08
        assert grown["text_head.weight"][n_base:n_ext].abs().max() <= 1 / math.sqrt(D)
    elif strategy == "torch-default":
        assert 2 < emb.norm(dim=1).mean() < 6                       # sqrt(16) = 4
    elif strategy == "mean":
        assert torch.allclose(emb, mean.expand_as(emb), atol=1e-6)
    elif strategy == "hewitt":
        assert record["init_details"]["hewitt_cov_scale"] == ck.HEWITT_COV_SCALE
        spread = (emb - mean).norm(dim=1).mean()
        base_spread = (sd["text_embedding.weight"][used] - mean).norm(dim=1).mean()
        assert 0.03 * base_spread < spread < 0.3 * base_spread      # ~10% of the base spread
        assert not torch.allclose(emb[0], emb[1])


def test_romanized_uses_base_pieces_and_falls_back_to_mean(tokenizers):
    import sentencepiece as spm

    base_path, ext_path, n_base, n_ext = tokenizers
    sd = pretrained_tables(n_base)
    grown, record = ck.grow_text_tables(sd, n_base, n_ext, "romanized", tokenizer=ext_path,
                                        base_tokenizer=base_path)
    sp = spm.SentencePieceProcessor(model_file=str(base_path))
    emb = sd["text_embedding.weight"]
    ids = sp.encode("selam")
    assert ids and sp.unk_id() not in ids
    assert torch.allclose(grown["text_embedding.weight"][n_base], emb[ids].mean(0), atol=1e-6)
    used = [i for i in range(n_base) if i not in record["stat_rows_excluded"]]
    mean = emb[used].mean(0)
    fallbacks = record["init_details"]["romanized_fallback_examples"]
    assert {f["piece"] for f in fallbacks} == {"ж", "\u135d"}
    assert {f["why"] for f in fallbacks} == {"<unk>", "empty"}
    for f in fallbacks:
        assert torch.allclose(grown["text_embedding.weight"][f["id"]], mean, atol=1e-6)
        assert torch.allclose(grown["text_head.bias"][f["id"]], sd["text_head.bias"][used].mean(),
                              atol=1e-6)


def test_extend_cli_writes_same_layout_and_record(tmp_path, tokenizers, capsys):
    base_path, ext_path, n_base, n_ext = tokenizers
    torch.save({"model": indextts_state_dict(n_base), "step": 5}, tmp_path / "gpt.pth")
    rc = cli(["extend", "--checkpoint", str(tmp_path / "gpt.pth"), "--base-tokenizer", str(base_path),
              "--tokenizer", str(ext_path), "--init", "mean", "--out", str(tmp_path / "gpt_ext.pth"),
              "--seed", "11", "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    raw = torch.load(tmp_path / "gpt_ext.pth", weights_only=True)
    assert set(raw) == {"model", "step"}
    assert raw["model"]["text_head.weight"].shape == (n_ext + 1, D)
    record = ck.read_extension_record(tmp_path / "gpt_ext.pth")
    assert record == printed
    assert record["base_rows"] == n_base and record["rows_after"] == n_ext + 1
    assert record["strategy"] == "mean" and record["seed"] == 11
    assert record["tokenizer_sha256"] == sha256_file(ext_path)
    assert record["base_tokenizer_sha256"] == sha256_file(base_path)
    assert record["checkpoint_sha256"] == sha256_file(tmp_path / "gpt_ext.pth")
    assert "number_text_tokens" in record["note"]
    assert (tmp_path / "gpt_ext.pth.extension.json").is_file()


def test_initial_state_from_record_is_exact(tokenizers):
    _, _, n_base, n_ext = tokenizers
    sd = pretrained_tables(n_base)
    for strategy in ("indextts", "hewitt"):
        grown, record = ck.grow_text_tables(sd, n_base, n_ext, strategy, seed=5)
        trained = {k: v.clone() for k, v in grown.items()}
        trained["text_embedding.weight"][n_base:n_ext] += 0.5
        init, exact = ck.initial_state_from_record(trained, record)
        assert exact
        assert all(torch.equal(init[k], grown[k]) for k in tables.TEXT_KEYS)


def test_python_objects_need_trust_pickle(tmp_path):
    torch.save({"model": pretrained_tables(5), "args": argparse.Namespace(lr=2e-5)}, tmp_path / "o.pth")
    with pytest.raises(ValueError, match=r"o\.pth cannot be read: it pickles argparse\.Namespace.*trust_pickle"):
        ckptio.load_state_dict(tmp_path / "o.pth")
    sd, meta = ckptio.load_state_dict(tmp_path / "o.pth", trust_pickle=True)
    assert meta["left_out"] == ["args"] and sd["text_head.bias"].shape == (6,)

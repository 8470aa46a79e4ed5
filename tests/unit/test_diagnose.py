"""Diagnose: norms, under-trained rows, drift from init, gradient probe, plateaus, checklist, CLI."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from amhelpers import causes, ckptio, logs, tables, undertrained
from amhelpers import checkpoint as ck
from amhelpers import diagnose as dg
from amhelpers import tokenizer as tk

D = 64
BASE = 300
NEW = 360
CONTROL_ROWS = (3, 4)
KEYS = tables.TEXT_KEYS


def pretrained(base: int = BASE, d: int = D, seed: int = 0) -> dict[str, torch.Tensor]:
    """Trained base rows (structured, norms ~2-3), two untrained control rows, untrained +1 row."""
    g = torch.Generator().manual_seed(seed)
    basis_e, basis_h = torch.randn(8, d, generator=g), torch.randn(8, d, generator=g)
    emb = 0.5 * (torch.randn(base, 8, generator=g) @ basis_e) / math.sqrt(8)
    emb += 0.1 * torch.randn(base, d, generator=g)
    head = 0.4 * (torch.randn(base, 8, generator=g) @ basis_h) / math.sqrt(8)
    bias = -1.0 + 0.3 * torch.randn(base, generator=g)
    bound = 1 / math.sqrt(d)
    for r in CONTROL_ROWS:
        emb[r] = 0.02 * torch.randn(d, generator=g)
        head[r] = (torch.rand(d, generator=g) * 2 - 1) * bound
    plus_e = 0.02 * torch.randn(1, d, generator=g)
    plus_h = (torch.rand(1, d, generator=g) * 2 - 1) * bound
    plus_b = (torch.rand(1, generator=g) * 2 - 1) * bound
    return {"text_embedding.weight": torch.cat([emb, plus_e]),
            "text_head.weight": torch.cat([head, plus_h]),
            "text_head.bias": torch.cat([bias, plus_b]),
            "mel_head.weight": torch.randn(20, d, generator=g)}


def move_new_rows(sd: dict, base: int, new: int, rel: torch.Tensor) -> dict:
    """Move new row i by exactly ``rel[i - base]`` of its norm (all three tables)."""
    out = {k: v.clone() for k, v in sd.items()}
    g = torch.Generator().manual_seed(9)
    for key in KEYS:
        w0 = sd[key][base:new]
        if w0.dim() == 1:
            out[key][base:new] = w0 + rel * w0.abs() * torch.sign(torch.randn(len(w0), generator=g))
        else:
            direction = torch.randn(w0.shape, generator=g)
            direction /= direction.norm(dim=1, keepdim=True)
            out[key][base:new] = w0 + direction * (rel * w0.norm(dim=1))[:, None]
    return out


@pytest.fixture()
def grown(tmp_path):
    """A grown IndexTTS2-layout checkpoint (indextts init) with its record beside it."""
    base_sd = pretrained()
    sd, record = ck.grow_text_tables(base_sd, BASE, NEW, "indextts", seed=1)
    path = tmp_path / "gpt_ext.pth"
    torch.save({"model": sd}, path)
    ck.write_extension_record(path, record)
    return path, sd, record


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    lines = ["the quick brown fox jumps over a lazy dog", "six big jackals quietly vexed my wizard",
             "selam bet lemma hagere abeba"] * 5
    proto = tk.train_sentencepiece(lines, 50, "unigram")
    naive = folder / "naive.model"
    naive.write_bytes(proto.SerializeToString())
    ext = sp_pb2.ModelProto()
    ext.CopyFrom(proto)
    low = min(p.score for p in proto.pieces) - 1
    for k, ch in enumerate(sorted(set("ሰላምቤትለማሀገረአበባ"))):
        piece = ext.pieces.add()
        piece.piece, piece.score, piece.type = ch, low - k, tk.NORMAL
    full = folder / "full.model"
    full.write_bytes(ext.SerializeToString())
    text = folder / "amh.txt"
    text.write_text("ሰላም ቤት\nለማ ሀገረ አበባ\n", encoding="utf-8")
    return naive, full, text


def cli(argv: list[str], capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    dg.add_arguments(parser)
    rc = dg.run(parser.parse_args(argv))
    return rc, capsys.readouterr().out


# ----------------------------------------------------------------------------- statistics
def test_table_stats_split_and_init_norms():
    sd, _ = ck.grow_text_tables(pretrained(), BASE, NEW, "indextts", seed=0)
    stats = tables.table_stats(sd, BASE)
    emb = stats["text_embedding.weight"]
    assert emb["base"]["rows"] == BASE and emb["new"]["rows"] == NEW - BASE
    assert emb["plus_one"]["row"] == NEW
    assert emb["init_norm"] == pytest.approx(0.02 * math.sqrt(D))
    assert emb["new"]["norm_mean"] == pytest.approx(0.02 * math.sqrt(D), rel=0.15)
    assert stats["text_head.weight"]["init_norm"] == pytest.approx(1 / math.sqrt(3))
    assert stats["text_head.weight"]["new"]["norm_mean"] == pytest.approx(1 / math.sqrt(3), rel=0.1)
    assert stats["text_head.bias"]["new"]["norm_mean"] == pytest.approx(0.5 / math.sqrt(D), rel=0.3)
    assert emb["base"]["norm_mean"] > 1.0
    with pytest.raises(ValueError, match="--base-rows 999 is larger than the text tables"):
        tables.table_stats(sd, 999)


@pytest.mark.parametrize("strategy", ["indextts", "torch-default", "mean"])
def test_flags_every_untrained_new_row_and_few_base_rows(strategy):
    sd, _ = ck.grow_text_tables(pretrained(), BASE, NEW, strategy, seed=2)
    mk = undertrained.undertrained_rows(sd, BASE)
    flagged = set(mk["flagged_rows"])
    assert set(range(BASE, NEW + 1)) <= flagged                       # all new rows and the +1 row
    base_flagged = {r for r in flagged if r < BASE}
    assert set(CONTROL_ROWS) <= base_flagged and len(base_flagged) <= 5
    assert mk["reference_rows"] == BASE and "robust z" in mk["rule"]


def test_trained_new_rows_are_not_flagged():
    base_sd = pretrained(seed=0)
    sd, _ = ck.grow_text_tables(base_sd, BASE, NEW, "indextts", seed=2)
    bigger = pretrained(base=NEW + 70, seed=0)           # more rows of the same trained structure
    for key in KEYS:
        sd[key][BASE:NEW] = bigger[key][NEW:NEW + NEW - BASE]
    flagged = set(undertrained.undertrained_rows(sd, BASE)["flagged_rows"])
    assert len(flagged & set(range(BASE, NEW))) <= 3


def test_drift_numbers(grown):
    _, sd, _ = grown
    rel = torch.tensor([0.005] * 30 + [0.1] * 30)
    trained = move_new_rows(sd, BASE, NEW, rel)
    out = tables.drift_from_init(trained, sd, BASE)
    for key in KEYS[:2]:                                  # rows: relative to the initial norm
        new = out["tables"][key]["new"]
        assert new["rows"] == NEW - BASE
        assert new["share_below_1pct"] == pytest.approx(0.5)
        assert new["max"] == pytest.approx(0.1, rel=1e-4)
        assert new["min"] == pytest.approx(0.005, rel=1e-3)
        assert new["beyond_decay"]["share_below_1pct"] == pytest.approx(0.5)
        assert out["tables"][key]["base"]["changed_rows"] == 0
    bias = out["tables"][KEYS[2]]                         # bias: absolute change / base RMS
    b0 = sd[KEYS[2]].double()
    scale = float(b0[:BASE].pow(2).mean().sqrt())
    expected = (rel.double() * b0[BASE:NEW].abs() / scale).numpy()
    assert bias["scale"] == pytest.approx(scale) and "RMS" in bias["relative_to"]
    assert bias["new"]["max"] == pytest.approx(expected.max(), rel=1e-4)
    assert bias["new"]["median"] == pytest.approx(np.median(expected), rel=1e-4)
    assert bias["base"]["changed_rows"] == 0
    trained["text_embedding.weight"][7] *= 0.99
    assert tables.drift_from_init(trained, sd, BASE)["tables"][KEYS[0]]["base"]["changed_rows"] == 1
    with pytest.raises(ValueError, match="init snapshot has"):
        tables.drift_from_init(trained, pretrained(), BASE)


def test_gradient_probe_per_row_and_grads_restored():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_embedding = torch.nn.Embedding(11, 8)
            self.text_head = torch.nn.Linear(8, 11)

    torch.manual_seed(0)
    model = Tiny()
    ids = torch.tensor([1, 2, 8])

    def loss_fn(m):
        return torch.nn.functional.cross_entropy(m.text_head(m.text_embedding(ids)), ids)

    model.text_head.bias.grad = torch.full((11,), 7.0)
    probe = tables.gradient_probe(model, loss_fn, base_rows=6)
    emb = probe["per_row"]["text_embedding.weight"]
    assert (emb[[1, 2, 8]] > 0).all() and (np.delete(emb, [1, 2, 8]) == 0).all()
    assert probe["tables"]["text_embedding.weight"]["base"]["zero_rows"] == 4      # rows 0,3,4,5
    assert probe["tables"]["text_embedding.weight"]["new"]["rows"] == 4            # 6..9; 10 is +1
    assert (probe["per_row"]["text_head.weight"] > 0).all()
    assert torch.equal(model.text_head.bias.grad, torch.full((11,), 7.0))
    assert model.text_embedding.weight.grad is None


# ----------------------------------------------------------------------------- plateaus
def _logs(tmp_path, values, name):
    path = tmp_path / f"{name}.jsonl"
    rows = [{"split": "train", "step": 10 * i, "loss": float(v), "text_loss": float(v)}
            for i, v in enumerate(values)]
    rows.insert(3, {"split": "val", "step": 30, "loss": 99.0})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_plateau_jsonl_flat_vs_decreasing(tmp_path):
    rng = np.random.default_rng(0)
    steps = np.arange(100)
    flat = 4.5 + 0.05 * rng.standard_normal(100)
    falling = 1.0 + 5.0 * np.exp(-steps / 30) + 0.02 * rng.standard_normal(100)
    p_flat = logs.plateau_from_log(_logs(tmp_path, flat, "flat"))
    p_fall = logs.plateau_from_log(_logs(tmp_path, falling, "fall"))
    assert p_flat["plateau"] is True and abs(p_flat["relative_change"]) < 0.02
    assert p_fall["plateau"] is False and p_fall["relative_change"] < -0.05
    for p in (p_flat, p_fall):
        assert {"window", "threshold", "slope", "plateau", "relative_change"} <= set(p)
        assert p["points"] == 100                                      # the val row was skipped
    with pytest.raises(ValueError, match="mel_loss"):
        logs.plateau_from_log(_logs(tmp_path, flat, "x"), key="mel_loss")
    with pytest.raises(FileNotFoundError, match="nothere"):
        logs.plateau_from_log(tmp_path / "nothere.jsonl")


def test_plateau_tensorboard(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for name, fn in (("flat", lambda i: 4.5 + 0.01 * math.sin(i)),
                     ("fall", lambda i: 1.0 + 5.0 * math.exp(-i / 30))):
        with SummaryWriter(str(tmp_path / name / "tb")) as writer:
            for i in range(80):
                writer.add_scalar("train/loss", fn(i), i * 10)
    assert logs.plateau_from_log(tmp_path / "flat")["plateau"] is True
    fall = logs.plateau_from_log(tmp_path / "fall" / "tb")
    assert fall["plateau"] is False and "train/loss" in fall["source"]
    with SummaryWriter(str(tmp_path / "text_only")) as writer:
        writer.add_text("note", "no scalars here", 0)
    with pytest.raises(ValueError, match=r"text_only.*no scalars"):
        logs.plateau_from_log(tmp_path / "text_only")
    with pytest.raises(ValueError, match="no scalar"):
        logs.plateau_from_log(tmp_path / "flat", key="mel_loss")


# ----------------------------------------------------------------------------- checklist
def test_rank_causes_scenarios():
    not_moving = causes.rank_causes({"unk_rate": 0.0, "new_share_below_1pct": 1.0,
                                 "new_drift_median": 0.001,
                                 "norm_ratio": {KEYS[0]: 0.05, KEYS[1]: 0.3}, "plateau": True})
    assert not_moving[0]["cause"] == causes.CAUSE_NOT_MOVING
    assert all(0 <= c["score"] <= 1 for c in not_moving)
    assert [c["score"] for c in not_moving] == sorted((c["score"] for c in not_moving), reverse=True)
    unk = next(c for c in not_moving if c["cause"] == causes.CAUSE_UNK)
    assert unk["score"] == 0 and unk["measured"]

    naive = causes.rank_causes({"unk_rate": 0.19, "new_share_below_1pct": 1.0,
                            "norm_ratio": {KEYS[0]: 0.05}, "plateau": True,
                            "val_loss_ratio": 1.0, "length_corr": 0.0})
    assert naive[0]["cause"] == causes.CAUSE_UNK and "19.0%" in naive[0]["evidence"]
    assert causes.rank_causes({"unk_rate": 0.06})[0]["cause"] == causes.CAUSE_UNK

    tf = causes.rank_causes({"unk_rate": 0.0, "new_share_below_1pct": 0.0, "val_loss_ratio": 1.05,
                         "mcd_ratio": 2.0, "plateau": False})
    assert tf[0]["cause"] == causes.CAUSE_TF_GEN
    nothing = causes.rank_causes({})
    assert {c["cause"] for c in nothing} == {causes.CAUSE_UNK, causes.CAUSE_NOT_MOVING, causes.CAUSE_NORM,
                                             causes.CAUSE_PLATEAU, causes.CAUSE_TF_GEN}
    assert not any(c["measured"] for c in nothing)


# ----------------------------------------------------------------------------- diagnose
def test_diagnose_json_rows_not_moving(grown, toks, tmp_path, capsys):
    path, sd, _ = grown
    _, full, text = toks
    trained = move_new_rows(sd, BASE, NEW, torch.full((NEW - BASE,), 0.002))
    out = tmp_path / "step1000.pth"
    torch.save({"model": trained, "step": 1000}, out)
    log = _logs(tmp_path, 4.5 + 0.01 * np.sin(np.arange(60)), "flat")
    rc, printed = cli(["--checkpoint", str(out), "--extension-record", str(ck.record_path(path)),
                       "--tokenizer", str(full), "--text", str(text), "--lang", "amh",
                       "--log", str(log), "--json", "--plot", str(tmp_path / "p.png")], capsys)
    assert rc == 0
    report = json.loads(printed)
    for key in KEYS:
        for part in ("base", "new"):
            assert {"rows", "norm_mean", "norm_std"} <= set(report["tables"][key][part])
    assert report["base_rows"] == BASE and report["base_rows_source"].startswith("extension record")
    assert set(range(BASE, NEW + 1)) <= set(report["flagged_rows"])
    assert report["drift"]["exact"] is True
    assert report["drift"]["tables"][KEYS[0]]["base"]["unchanged_since_extension"] is True
    new = report["drift"]["tables"][KEYS[0]]["new"]
    assert new["share_below_1pct"] == 1.0 and new["median"] == pytest.approx(0.002, rel=1e-3)
    assert report["unk"]["unk_rate"] == 0.0
    assert report["plateau"]["plateau"] is True
    assert report["causes"][0]["cause"] == causes.CAUSE_NOT_MOVING
    assert {"cause", "score", "evidence"} <= set(report["causes"][0])
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_diagnose_naive_tokenizer_ranks_unk_first(grown, toks):
    path, _, _ = grown
    naive, _, text = toks
    report = dg.diagnose(path, tokenizer=naive, text=text, lang="amh")
    assert report["unk"]["unk_rate"] > 0.05
    assert report["causes"][0]["cause"] == causes.CAUSE_UNK
    assert report["drift"]["tables"][KEYS[0]]["new"]["share_below_1pct"] == 1.0  # right after growing


def test_diagnose_init_snapshot_minivoice_layout_and_text_output(tmp_path, capsys):
    sd, _ = ck.grow_text_tables(pretrained(), BASE, NEW, "mean", seed=0)
    payload = {"format": ckptio.MINIVOICE_FORMAT, "model": sd, "meta": {},
               "config": {"number_text_tokens": NEW, "number_mel_codes": 20, "model_dim": D}}
    torch.save(payload, tmp_path / "init.pt")
    trained = move_new_rows(sd, BASE, NEW, torch.full((NEW - BASE,), 0.3))
    torch.save({**payload, "model": trained}, tmp_path / "ckpt.pt")
    rc, printed = cli(["--checkpoint", str(tmp_path / "ckpt.pt"), "--base-rows", str(BASE),
                       "--init-snapshot", str(tmp_path / "init.pt")], capsys)
    assert rc == 0 and "likely causes" in printed and "drift of new embedding rows" in printed
    report = dg.diagnose(tmp_path / "ckpt.pt", base_rows=BASE, init_snapshot=tmp_path / "init.pt")
    assert report["layout"] == "minivoice"
    assert report["drift"]["tables"][KEYS[0]]["new"]["share_below_1pct"] == 0.0
    assert report["causes"][0]["cause"] != causes.CAUSE_NOT_MOVING


def test_diagnose_bad_inputs(tmp_path, grown):
    path, _, _ = grown
    with pytest.raises(ValueError, match=r"--base-rows 5000 is larger than the text tables.*gpt_ext"):
        dg.diagnose(path, base_rows=5000)
    torch.save({"model": {"mel_head.weight": torch.zeros(2, 2)}}, tmp_path / "nomodel.pth")
    with pytest.raises(ValueError, match=r"nomodel\.pth has no text tables.*text_embedding\.weight"):
        dg.diagnose(tmp_path / "nomodel.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match=r"junk\.pth cannot be read"):
        dg.diagnose(tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="--tokenizer and --text go together"):
        dg.diagnose(path, text="amh.txt")


def test_plot_returns_figure_without_base_rows():
    from matplotlib.figure import Figure

    sd = pretrained()
    fig = dg.plot_norms(sd, None)
    assert isinstance(fig, Figure) and len(fig.axes) == 6


def test_rows_never_in_training_are_not_blamed_on_the_learning_rate(grown, tmp_path):
    """A new row whose token never occurs in the training data cannot move: with the run's
    training manifest, "not moving" is judged on the rows a gradient could reach (issue 11)."""
    path, sd, _ = grown
    n_new = NEW - BASE
    # the first 40 new rows trained (moved 10%), the last 20 never occurred (did not move)
    rel = torch.tensor([0.1] * 40 + [0.0] * (n_new - 40))
    trained = move_new_rows(sd, BASE, NEW, rel)
    in_training = list(range(3, BASE)) + list(range(BASE, BASE + 40))
    out = tables.drift_from_init(trained, sd, BASE, trained_ids=iter(in_training))
    for key in KEYS[:2]:
        seen = out["tables"][key]["new"]["in_training"]
        assert seen["rows"] == 40 and seen["share_below_1pct"] == 0.0
        assert out["tables"][key]["new"]["share_below_1pct"] == pytest.approx(20 / n_new)
    checkpoint = tmp_path / "trained.pth"
    torch.save({"model": trained}, checkpoint)
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"r{i}", "lang": "amh", "text": "x",
                                            "text_ids": in_training[i::5], "codes": [1, 2],
                                            "n_codes": 2, "n_text": len(in_training[i::5])})
                                 + "\n" for i in range(5)))
    blind = dg.diagnose(checkpoint, extension_record=ck.record_path(path))
    aware = dg.diagnose(checkpoint, extension_record=ck.record_path(path), train_manifest=manifest)
    assert blind["evidence"]["new_share_below_1pct"] == pytest.approx(20 / n_new)
    assert aware["evidence"]["new_share_below_1pct"] == 0.0
    assert aware["evidence"]["new_rows_in_training"] == 40
    assert aware["evidence"]["new_rows_not_in_training"] == n_new - 40
    moving = next(c for c in aware["causes"] if c["cause"] == causes.CAUSE_NOT_MOVING)
    assert moving["score"] == 0.0
    assert "0% of the 40 new rows whose token occurs in the training data" in moving["evidence"]
    assert f"{n_new - 40} more never occur in it" in moving["evidence"]

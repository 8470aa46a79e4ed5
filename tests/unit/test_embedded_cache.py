"""embedded.base_model's cache: reuse a finished run of the same settings, resume an interrupted
one, retrain when the profile's pretraining settings or the data change.

The trainer and the data builders are replaced by fakes, so this runs in milliseconds.
"""

import dataclasses
import json
from pathlib import Path

import pytest

from amhelpers import embedded
from amhelpers.data import meta_path


@pytest.fixture
def fake_training(tmp_path, monkeypatch):
    """Fake manifests (with a data key) and a fake trainer that records its configs."""
    data_key = {"value": "data-v1"}
    calls = []

    def fake_manifest(p, lang, split, tokenizer=None, progress=True, limit=None):
        path = tmp_path / "manifests" / f"{lang}_{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        meta_path(path).write_text(json.dumps({"key": f"{data_key['value']}-{split}"}))
        return path

    def fake_train(cfg):
        calls.append(cfg)
        out = Path(cfg.output_dir)
        ckpt = out / f"ckpt_{cfg.max_steps:08d}.pt"
        ckpt.write_bytes(b"weights")
        return {"checkpoint": str(ckpt), "step": cfg.max_steps}

    monkeypatch.setattr(embedded, "manifest", fake_manifest)
    monkeypatch.setattr(embedded, "base_tokenizer", lambda p: tmp_path / "tok.model")
    monkeypatch.setattr("amhelpers.train.train", fake_train)
    return calls, data_key


def test_base_model_reuses_retrains_and_resumes(fake_training):
    calls, data_key = fake_training
    p = embedded.profile("quick")
    first = embedded.base_model(p, progress=False)
    assert len(calls) == 1 and calls[0].batch_size == p.pretrain_batch_size
    assert calls[0].guided_attention_weight == p.guided_attention_weight > 0
    assert embedded.base_model(p, progress=False) == first and len(calls) == 1  # reused

    longer = dataclasses.replace(p, pretrain_steps=p.pretrain_steps + 10)
    second = embedded.base_model(longer, progress=False)
    assert len(calls) == 2 and second != first and not first.exists()  # retrained, old run gone

    unguided = dataclasses.replace(longer, guided_attention_weight=0.0)
    embedded.base_model(unguided, progress=False)
    assert len(calls) == 3 and calls[-1].guided_attention_weight == 0.0
    embedded.base_model(longer, progress=False)
    assert len(calls) == 4

    data_key["value"] = "data-v2"  # e.g. another tokenizer or codec: the manifests' key changes
    embedded.base_model(longer, progress=False)
    assert len(calls) == 5

    # an interrupted run of the same settings resumes instead of starting over
    run_dir = Path(calls[-1].output_dir)
    (run_dir / "done.json").unlink()
    embedded.base_model(longer, progress=False)
    assert len(calls) == 6 and calls[-1].resume == "auto"


def test_base_model_replaces_a_run_without_key(fake_training):
    """A run folder from an older version (no key) is not resumed with other settings."""
    calls, _ = fake_training
    p = embedded.profile("quick")
    run_dir = embedded.folder(p) / "runs" / "base"
    run_dir.mkdir(parents=True)
    (run_dir / "ckpt_00000150.pt").write_bytes(b"old")
    (run_dir / "done.json").write_text(json.dumps({"checkpoint": str(run_dir / "ckpt_00000150.pt")}))
    embedded.base_model(p, progress=False)
    assert len(calls) == 1 and calls[0].resume is None

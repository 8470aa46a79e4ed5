"""Retention levers of the trainer: replay batches (``--replay-manifest``, ``--replay-fraction``)
and frozen lower blocks (``--freeze-layers``), on the tiny synthetic setup of test_train."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_train import assert_identical, config, stop_at, synthetic_rows, weights

from amhelpers import recipes
from amhelpers.data import LengthBucketBatches, ReplayBatches, training_batches, write_manifest
from amhelpers.train import TrainConfig, train


def lengths(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 40, (n,), generator=g).tolist()


# ------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("fraction,batch,k", [(0.25, 8, 2), (0.5, 8, 4), (0.01, 8, 1)])
def test_every_batch_holds_the_set_share_of_replay_rows(fraction, batch, k):
    target, replay = lengths(50, 0), lengths(13, 1)
    sampler = ReplayBatches(target, replay, batch, fraction, seed=3, window=4)
    seen_target, seen_replay = [], []
    for _ in range(2):  # two target epochs: the replay part cycles on its own
        for indices in sampler:
            extra = [i for i in indices if i >= len(target)]
            assert len(extra) == k  # the replay part of every batch, the epoch's last included
            assert len(indices) - k <= batch - k
            seen_target += [i for i in indices if i < len(target)]
            seen_replay += [i - len(target) for i in extra]
    assert sorted(seen_target) == sorted(list(range(50)) * 2)  # each target row once per epoch
    assert set(seen_replay) == set(range(13))                  # every replay row is used
    assert sampler.epoch == 2 and len(sampler) == -(-50 // (batch - k))


def test_replay_position_resumes_exactly():
    target, replay = lengths(40, 0), lengths(9, 1)
    whole = ReplayBatches(target, replay, 8, 0.25, seed=1, window=2)
    stream = (b for _ in range(3) for b in whole)
    expected = [next(stream) for _ in range(17)]
    first = ReplayBatches(target, replay, 8, 0.25, seed=1, window=2)
    head = (b for _ in range(3) for b in first)
    got = [next(head) for _ in range(7)]
    state = first.state_dict()
    again = ReplayBatches(target, replay, 8, 0.25, seed=1, window=2)
    again.load_state_dict(state)
    tail = (b for _ in range(3) for b in again)
    got += [next(tail) for _ in range(10)]
    assert got == expected


def test_replay_positions_do_not_mix_with_plain_ones():
    plain = LengthBucketBatches(lengths(20, 0), 4)
    mixed = ReplayBatches(lengths(20, 0), lengths(5, 1), 4, 0.25)
    with pytest.raises(ValueError, match="with replay"):
        plain.load_state_dict(mixed.state_dict())
    with pytest.raises(ValueError, match="without replay"):
        mixed.load_state_dict(plain.state_dict())
    other = ReplayBatches(lengths(20, 0), lengths(5, 1), 4, 0.5)
    with pytest.raises(ValueError, match="fraction 0.5"):
        mixed.load_state_dict(other.state_dict())


def test_replay_refuses_fractions_that_cannot_work():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        ReplayBatches([3, 4], [5], 4, 1.0)
    with pytest.raises(ValueError, match="no target-language row"):
        ReplayBatches([3, 4], [5], 2, 0.9)
    with pytest.raises(ValueError, match="at least one replay row"):
        ReplayBatches([3, 4], [], 4, 0.25)
    assert isinstance(training_batches([3, 4], 2), LengthBucketBatches)


# ------------------------------------------------------------------------------- trainer
@pytest.fixture
def manifests(tmp_path):
    """test_train's synthetic target-language manifests (train, val)."""
    return tuple(write_manifest(tmp_path / f"{split}.jsonl", synthetic_rows(n, seed, split[:2]))
                 for split, n, seed in (("train", 64, 0), ("val", 16, 1)))


@pytest.fixture
def replay_manifests(tmp_path, manifests):
    replay = write_manifest(tmp_path / "replay.jsonl", synthetic_rows(24, 5, "rp"))
    return (*manifests, replay)


@pytest.mark.parametrize("values,flag", [
    ({"replay_fraction": 0.25}, "without --replay-manifest"),
    ({"replay_manifest": "r.jsonl"}, "with --replay-fraction 0"),
    ({"replay_manifest": "r.jsonl", "replay_fraction": 1.0}, "--replay-fraction=1.0"),
    ({"freeze_layers": -1}, "--freeze-layers=-1"),
])
def test_bad_retention_settings_name_the_flag(values, flag):
    with pytest.raises(ValueError, match=flag.replace("(", r"\(")):
        TrainConfig(train_manifest="t.jsonl", **values).check()


def test_replay_changes_the_run_and_resumes_bit_identically(tmp_path, replay_manifests,
                                                            one_thread):
    train_m, val_m, replay = replay_manifests
    plain = train(config((train_m, val_m), tmp_path / "plain"))
    mixed_cfg = config((train_m, val_m), tmp_path / "mixed", replay_manifest=str(replay),
                       replay_fraction=0.25)
    mixed = train(mixed_cfg)
    assert mixed["val"]["loss"] != plain["val"]["loss"]  # the replay rows were trained on
    # Die at step 6 (the last checkpoint is step 4), resume: the whole run's weights.
    part = dataclasses.replace(mixed_cfg, output_dir=str(tmp_path / "part"))
    stop_at(part, 6)
    with pytest.raises(ValueError, match="--replay-fraction 0.5"):  # not another fraction
        train(dataclasses.replace(part, replay_fraction=0.5, resume="auto"))
    resumed = train(dataclasses.replace(part, resume="auto"))
    assert_identical(weights(resumed["checkpoint"]), weights(mixed["checkpoint"]))


def test_replay_manifest_ids_are_checked_against_the_model(tmp_path, manifests):
    bad = synthetic_rows(4, 5, "rp")
    bad[2]["text_ids"] = [99]
    bad[2]["n_text"] = 1
    replay = write_manifest(tmp_path / "bad_replay.jsonl", bad)
    with pytest.raises(ValueError, match=r"bad_replay.jsonl line 3.*text id 99"):
        train(config(manifests, tmp_path / "run", replay_manifest=str(replay),
                     replay_fraction=0.25))


def test_frozen_layers_stay_bit_identical_and_the_rest_trains(tmp_path, manifests):
    first = train(config(manifests, tmp_path / "a", max_steps=1, save_every=1))
    start = weights(first["checkpoint"])
    out = train(config(manifests, tmp_path / "b", init_checkpoint=first["checkpoint"],
                       freeze_layers=1, decay="all", weight_decay=0.1))
    end = weights(out["checkpoint"])
    for name in start:
        same = torch.equal(start[name], end[name])
        assert same == name.startswith("gpt.0."), name
    with pytest.raises(ValueError, match="--freeze-layers 3 is more than the model's 2"):
        train(config(manifests, tmp_path / "c", freeze_layers=3))


def test_recipes_carry_the_retention_settings_to_the_trainer():
    fix = recipes.with_settings(recipes.FIX, 1e-3, 100, replay_fraction=0.25, freeze_layers=2)
    cfg = fix.train_config(500, 1e-3, 100, train_manifest="t.jsonl", replay_manifest="r.jsonl")
    assert (cfg.replay_fraction, cfg.freeze_layers) == (0.25, 2)
    for bad in ({"replay_fraction": 1.0}, {"freeze_layers": -2}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            recipes.with_settings(recipes.FIX, 1e-3, 100, **bad)


def test_replay_batches_drive_a_torch_dataloader_over_concatenated_datasets():
    """The playbook's wiring for a team's own trainer: ``batch_sampler`` over
    ``ConcatDataset([target, base])``; each batch's share of base rows is the set fraction."""
    from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

    target = TensorDataset(torch.zeros(30, dtype=torch.long))  # language 0
    base = TensorDataset(torch.ones(11, dtype=torch.long))     # language 1
    sampler = ReplayBatches([5] * 30, [5] * 11, batch_size=8, fraction=0.25, seed=0)
    loader = DataLoader(ConcatDataset([target, base]), batch_sampler=sampler)
    shares = [float(batch[0].float().mean()) for batch in loader]
    assert len(shares) == len(sampler) == 5
    assert shares[:-1] == [0.25] * 4 and shares[-1] == 2 / 8  # the last: 6 target + 2 base rows

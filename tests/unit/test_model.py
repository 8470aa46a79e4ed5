"""MiniVoice: layout, init, losses, generation (KV cache vs none) and checkpoints.

Tiny configs (d=32, 2 layers, 30 text tokens, K=16) keep every test well under a second.
"""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from amhelpers.model import (
    CheckpointMismatchError,
    MiniVoice,
    MiniVoiceConfig,
    count_parameters,
    guided_attention_loss,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

K = 16


def tiny_config(**overrides) -> MiniVoiceConfig:
    values = {"number_text_tokens": 30, "number_mel_codes": K + 2, "model_dim": 32, "layers": 2,
              "heads": 2, "max_text_tokens": 20, "max_mel_tokens": 40}
    return MiniVoiceConfig(**{**values, **overrides})


def tiny_model(seed: int = 0, **overrides) -> MiniVoice:
    torch.manual_seed(seed)
    return MiniVoice(tiny_config(**overrides))


def batch(rows: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """Pad (text_ids, codes) pairs into the model's inputs (pad value 0)."""
    n, m = max(len(t) for t, _ in rows), max(len(c) for _, c in rows)
    return {
        "text_ids": torch.tensor([t + [0] * (n - len(t)) for t, _ in rows]),
        "text_lengths": torch.tensor([len(t) for t, _ in rows]),
        "codes": torch.tensor([c + [0] * (m - len(c)) for _, c in rows]),
        "code_lengths": torch.tensor([len(c) for _, c in rows]),
    }


ROWS = [([5, 6, 7], [1, 2, 3, 4, 5]), ([9, 10, 11, 12, 13], [7, 7]), ([4], [0, 15, 3, 9])]


# ------------------------------------------------------------------------------ layout
def test_default_size_parameter_count():
    """~3.8M parameters at d=256, 4 layers, FF 1024, 500 text tokens, K=512 (counted, not run)."""
    cfg = MiniVoiceConfig(number_text_tokens=500, number_mel_codes=514)
    with torch.device("meta"):
        model = MiniVoice(cfg)
    d, ff = 256, 1024
    blocks = 4 * (4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d)
    tables = 501 * d + (501 * d + 501) + 514 * d + (514 * d + 514) + (202 + 402) * d + 2 * d
    assert count_parameters(model) == blocks + tables == 3_834_871
    assert (cfg.start_mel_token, cfg.stop_mel_token, cfg.codebook_size) == (512, 513, 512)
    assert model.text_embedding.weight.shape == (501, 256)
    assert model.text_head.weight.shape == (501, 256)
    assert model.mel_embedding.weight.shape == model.mel_head.weight.shape == (514, 256)


def test_text_tables_have_number_text_tokens_plus_one_rows():
    model = tiny_model()
    assert model.text_embedding.num_embeddings == 31
    assert model.text_head.out_features == 31 and model.text_head.bias.shape == (31,)
    assert model.mel_embedding.num_embeddings == model.mel_head.out_features == K + 2
    assert model.text_pos_embedding.emb.num_embeddings == 22
    assert model.mel_pos_embedding.emb.num_embeddings == 42


def test_init_statistics_follow_unifiedvoice():
    torch.manual_seed(0)
    model = MiniVoice(tiny_config(number_text_tokens=400, model_dim=64, heads=4))
    for table in (model.text_embedding.weight, model.mel_embedding.weight,
                  model.text_pos_embedding.emb.weight, model.mel_pos_embedding.emb.weight):
        assert abs(table.mean().item()) < 0.003
        assert table.std().item() == pytest.approx(0.02, rel=0.1)
    bound = 1 / math.sqrt(64)
    for head in (model.text_head, model.mel_head):  # nn.Linear's default: uniform(±1/sqrt(d))
        assert head.weight.abs().max().item() <= bound
        assert head.bias.abs().max().item() <= bound
    assert model.text_head.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_config_json_round_trip_and_errors():
    cfg = tiny_config()
    assert MiniVoiceConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        MiniVoiceConfig.from_dict({**cfg.to_dict(), "model_dimension": 3})
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(heads=3)


# ------------------------------------------------------------------------------ losses
def test_forward_losses_and_token_counts():
    model = tiny_model()
    out = model(**batch(ROWS))
    assert out["text_tokens"].item() == sum(len(t) + 1 for t, _ in ROWS)  # text + stop_text
    assert out["mel_tokens"].item() == sum(len(c) + 1 for _, c in ROWS)  # codes + stop_mel
    # Untrained: near the uniform cross-entropy.
    assert out["mel_loss"].item() == pytest.approx(math.log(K + 2), abs=0.5)
    assert out["text_loss"].item() == pytest.approx(math.log(31), abs=0.5)


def test_targets_are_next_tokens_with_stops():
    model = tiny_model()
    out = model(**batch(ROWS[:1]), return_logits=True)
    ignore = -100
    assert out["text_targets"][0].tolist() == [5, 6, 7, 1, ignore]  # start 5 6 7 stop
    assert out["mel_targets"][0].tolist() == [1, 2, 3, 4, 5, K + 1]  # start_mel 1..5 -> stop


def test_padding_does_not_change_any_row():
    model = tiny_model().eval()
    together = model(**batch(ROWS), return_logits=True)
    for i, row in enumerate(ROWS):
        alone = model(**batch([row]), return_logits=True)
        n, m = len(row[0]) + 1, len(row[1]) + 1
        torch.testing.assert_close(together["text_logits"][i, :n], alone["text_logits"][0, :n])
        torch.testing.assert_close(together["mel_logits"][i, :m], alone["mel_logits"][0, :m])


def test_loss_decreases_when_overfitting_a_tiny_batch():
    model = tiny_model()
    inputs = batch(ROWS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(80):
        out = model(**inputs)
        loss = 0.1 * out["text_loss"] + out["mel_loss"]
        first = first if first is not None else (out["text_loss"].item(), out["mel_loss"].item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert out["mel_loss"].item() < 0.2 * first[1]
    assert out["text_loss"].item() < 0.5 * first[0]


# ---------------------------------------------------------------- guided attention
def _packed_attention(text_len: int, mel_len: int, pick) -> torch.Tensor:
    """(1, L, L) attention where mel query n puts all its weight on text position pick(n)."""
    length = text_len + mel_len
    probs = torch.zeros(1, length, length)
    for n in range(mel_len):
        probs[0, text_len + n, pick(n)] = 1.0
    return probs


def test_guided_attention_loss_is_low_on_the_diagonal_and_high_off_it():
    text_len, mel_len = torch.tensor([10]), torch.tensor([20])
    diagonal = _packed_attention(10, 20, lambda n: int((n + 0.5) / 20 * 10))
    stuck = _packed_attention(10, 20, lambda n: 0)
    backwards = _packed_attention(10, 20, lambda n: 9 - int((n + 0.5) / 20 * 10))
    low = float(guided_attention_loss(diagonal, text_len, mel_len, 0.2))
    assert low < 0.02
    assert float(guided_attention_loss(stuck, text_len, mel_len, 0.2)) > 0.5
    assert float(guided_attention_loss(backwards, text_len, mel_len, 0.2)) > 0.5
    # A wider band forgives more; weight on mel keys is renormalised away (text part only).
    assert float(guided_attention_loss(stuck, text_len, mel_len, 0.5)) < float(
        guided_attention_loss(stuck, text_len, mel_len, 0.2))
    half = diagonal.clone()
    half[0, 10:, 10:] = torch.eye(20)  # equal weight on a mel key
    assert float(guided_attention_loss(half, text_len, mel_len, 0.2)) == pytest.approx(low)


def test_guide_loss_leaves_the_other_losses_alone_and_trains_the_probed_heads():
    model = tiny_model(layers=3)
    plain = model(**batch(ROWS))
    guided = model(**batch(ROWS), guide_sigma=0.2)
    assert torch.equal(plain["mel_loss"], guided["mel_loss"])
    assert 0.0 < guided["guide_loss"].item() < 1.0
    guided["guide_loss"].backward()
    assert model.gpt[1].attn.c_attn.weight.grad.abs().sum() > 0
    assert model.mel_head.weight.grad is None  # the loss reads attention, not the heads
    # Padding a row must not change it: the loss of a batch is the mean over its mel queries.
    alone = [model(**batch([row]), guide_sigma=0.2) for row in ROWS]
    counts = torch.tensor([len(c) + 1.0 for _, c in ROWS])
    expected = sum(a["guide_loss"].item() * n for a, n in zip(alone, counts)) / counts.sum()
    assert guided["guide_loss"].item() == pytest.approx(float(expected), rel=1e-5)


def test_text_attention_maps_are_what_the_guide_loss_reads():
    model = tiny_model(layers=3)
    text, codes = ROWS[0]
    maps = model.text_attention(text, codes)
    assert maps.shape == (2, len(codes) + 1, len(text) + 2)
    assert torch.allclose(maps.sum(-1), torch.ones(2, len(codes) + 1))
    n = (torch.arange(len(codes) + 1) + 0.5) / (len(codes) + 1)
    t = (torch.arange(len(text) + 2) + 0.5) / (len(text) + 2)
    penalty = 1 - torch.exp(-(n[:, None] - t[None]) ** 2 / (2 * 0.2 ** 2))
    expected = (maps * penalty).sum(-1).mean()
    loss = model(**batch([ROWS[0]]), guide_sigma=0.2)["guide_loss"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="codes must be in"):
        model.text_attention(text, [K])
    with pytest.raises(ValueError, match="layers=1"):
        tiny_model(layers=1).text_attention(text, codes)


def test_bad_ids_and_lengths_raise_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"text ids must be in \[0, 30\)"):
        model(**batch([([5, 30], [1])]))
    with pytest.raises(ValueError, match=r"codes must be in \[0, 16\)"):
        model(**batch([([5], [16])]))
    with pytest.raises(ValueError, match="max_mel_tokens"):
        model(**batch([([5], [1] * 41)]))
    with pytest.raises(ValueError, match="number_text_tokens|text ids"):
        model.generate([31])


# --------------------------------------------------------------------------- generation
@functools.cache
def trained_model() -> MiniVoice:
    """A model that learned codes = f(text) for a few rows, so generation stops by itself.

    Cached: tests only generate with it, never change it.
    """
    model = tiny_model(seed=1)
    inputs = batch(ROWS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(120):
        out = model(**inputs)
        optimizer.zero_grad()
        (0.1 * out["text_loss"] + out["mel_loss"]).backward()
        optimizer.step()
    return model.eval()


def test_kv_cache_generation_equals_full_recompute():
    model = trained_model()
    for text, codes in ROWS:
        with_cache = model.generate(text)
        assert with_cache == model.generate(text, use_cache=False)
        assert with_cache == codes  # it learned them, and the stop token ended each one
    random_model = tiny_model(seed=3).eval()
    for text in ([2, 3], list(range(2, 20))):
        assert random_model.generate(text, max_len=30) == random_model.generate(
            text, max_len=30, use_cache=False)


def test_batched_generation_equals_one_at_a_time():
    model = trained_model()
    texts = [text for text, _ in ROWS] + [[2, 3, 4, 5, 6, 7, 8]]
    assert model.generate_batch(texts) == [model.generate(t) for t in texts]
    random_model = tiny_model(seed=3).eval()
    texts = [[2, 3], list(range(2, 20)), [], [29]]
    assert random_model.generate_batch(texts, max_len=25, min_len=4) == [
        random_model.generate(t, max_len=25, min_len=4) for t in texts]
    assert model.generate_batch([]) == []


def test_generation_stop_token_cap_and_start_token():
    model = tiny_model().eval()
    stop, start = model.config.stop_mel_token, model.config.start_mel_token
    with torch.no_grad():
        model.mel_head.bias[stop] = 100.0
    assert model.generate([3, 4]) == []
    assert len(model.generate([3, 4], min_len=3)) == 3  # stop forbidden before 3 codes
    with torch.no_grad():
        model.mel_head.bias[stop] = -100.0
        model.mel_head.bias[start] = 100.0  # start_mel is never a valid output
    codes = model.generate([3, 4], max_len=7)
    assert len(codes) == 7 and start not in codes and stop not in codes
    assert len(model.generate([3, 4], max_len=1000)) == model.config.max_mel_tokens


def test_sampling_is_seeded_and_leaves_the_global_rng_alone():
    model = tiny_model().eval()
    state = torch.get_rng_state()
    a = model.generate([3, 4, 5], greedy=False, top_k=5, temperature=1.5, seed=7, max_len=20)
    b = model.generate([3, 4, 5], greedy=False, top_k=5, temperature=1.5, seed=7, max_len=20)
    assert a == b
    assert torch.equal(state, torch.get_rng_state())
    assert model.training is False
    model.train()
    model.generate([3], max_len=2)
    assert model.training is True  # generate restores the mode it found


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_atomic(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path / "m.pt", model, step=12, tokenizer="bpe.model")
    loaded, meta = load_checkpoint(path)
    assert meta == {"step": 12, "tokenizer": "bpe.model"}
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left
    assert set(read_checkpoint(path)) == {"format", "config", "model", "meta"}


def test_loading_another_config_names_the_tensor_and_both_shapes(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model())
    other = MiniVoice(tiny_config(number_text_tokens=40))
    with pytest.raises(CheckpointMismatchError) as err:
        other.load_state_dict(read_checkpoint(path)["model"])
    message = str(err.value)
    assert "text_embedding.weight: checkpoint has shape (31, 32), model has (41, 32)" in message
    assert "text_head.bias: checkpoint has shape (31,), model has (41,)" in message
    assert "mel_embedding" not in message
    state = tiny_model().state_dict()
    del state["final_norm.bias"]
    with pytest.raises(CheckpointMismatchError, match="missing from the checkpoint: final_norm"):
        tiny_model().load_state_dict(state)


def test_reading_something_else_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a MiniVoice checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt")

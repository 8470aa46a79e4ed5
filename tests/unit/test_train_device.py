"""``train --device`` and ``--amp`` (issue 11): the README's "on a GPU" claim for train.

No GPU here: the tests check that ``cpu`` is the default bit for bit, that CUDA asked on a
machine without it is one line naming ``--device``, how ``auto`` and ``cuda:N`` resolve where
CUDA is (pretended) present, that checkpoints hold only CPU tensors (so they load anywhere and
a run resumes on another device), and bf16 autocast on the CPU.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
from test_train import TINY, assert_identical, config, stop_at, synthetic_rows, weights
from torch.overrides import TorchFunctionMode

from amhelpers import __main__ as cli
from amhelpers.data import collate, write_manifest
from amhelpers.model import MiniVoice, MiniVoiceConfig
from amhelpers.train import on_device, resolve_device, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def manifests(tmp_path) -> tuple[Path, Path]:
    return (write_manifest(tmp_path / "train.jsonl", synthetic_rows(64, 0, "tr")),
            write_manifest(tmp_path / "val.jsonl", synthetic_rows(16, 1, "va")))


def cli_args(manifests, out: Path, *extra: str) -> list[str]:
    return ["train", "--train-manifest", str(manifests[0]), "--output-dir", str(out),
            "--max-steps", "2", "--batch-size", "8", "--warmup-steps", "1", "--no-progress",
            "--model-dim", "32", "--layers", "2", "--heads", "2", "--number-text-tokens", "30",
            "--number-mel-codes", "18", *extra]


def all_tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from all_tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from all_tensors(v)


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks the GPU on this machine")
def test_cpu_device_equals_the_default_bit_for_bit(manifests, tmp_path):
    model = {**TINY, "dropout": 0.1}
    default = train(config(manifests, tmp_path / "a", model=model))
    cpu = train(config(manifests, tmp_path / "b", model=model, device="cpu"))
    assert default["device"] == cpu["device"] == "cpu"
    assert_identical(weights(default["checkpoint"]), weights(cpu["checkpoint"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_one_line_error_naming_device(manifests, tmp_path, capsys,
                                                             device):
    out = tmp_path / "run"
    assert cli.main(cli_args(manifests, out, "--device", device)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --device {device}: ") and err.count("\n") == 1
    assert ("built without CUDA" in err or "no CUDA GPU is visible" in err)
    assert "use --device cpu" in err
    assert not out.exists()  # refused before the run folder is made


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", ""])
def test_unknown_device_names_are_refused(manifests, tmp_path, capsys, device):
    assert cli.main(cli_args(manifests, tmp_path / "run", "--device", device)) == 2
    err = capsys.readouterr().err
    assert f"--device={device!r} (choose auto, cpu, cuda or cuda:N)" in err
    with pytest.raises(ValueError, match="is not a device"):
        resolve_device(device)


def test_auto_and_indices_where_cuda_is_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\), "
                                         r"cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_checkpoints_hold_cpu_tensors_and_resume_on_another_device_setting(manifests, tmp_path):
    """A run saved under ``auto`` resumes under ``cpu`` from a file loaded with map_location."""
    model = {**TINY, "dropout": 0.1}
    straight = train(config(manifests, tmp_path / "a", model=model, device="cpu"))
    stop_at(config(manifests, tmp_path / "b", model=model, device="auto"), 6)  # after step 4's save
    saved = torch.load(tmp_path / "b" / "ckpt_00000004.pt", map_location="cpu",
                       weights_only=True)
    devices = {t.device.type for t in all_tensors(saved)}
    assert devices == {"cpu"} and len(list(all_tensors(saved["train_state"]))) > 10
    resumed = train(config(manifests, tmp_path / "b", model=model, device="cpu", resume="auto"))
    assert_identical(weights(straight["checkpoint"]), weights(resumed["checkpoint"]))


def test_bf16_autocast_trains_and_resumes_exactly(manifests, tmp_path):
    plain = train(config(manifests, tmp_path / "fp32"))
    straight = train(config(manifests, tmp_path / "a", amp="bf16"))
    assert straight["val"]["loss"] < 10 and torch.isfinite(
        weights(straight["checkpoint"])["mel_head.weight"]).all()
    assert not torch.equal(weights(plain["checkpoint"])["mel_head.weight"],
                           weights(straight["checkpoint"])["mel_head.weight"])
    stop_at(config(manifests, tmp_path / "b", amp="bf16"), 6)
    resumed = train(config(manifests, tmp_path / "b", amp="bf16", resume="auto"))
    assert_identical(weights(straight["checkpoint"]), weights(resumed["checkpoint"]))
    for weight in weights(resumed["checkpoint"]).values():
        assert weight.dtype == torch.float32  # autocast: the weights stay float32


def test_amp_flag_choices(manifests, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(cli_args(manifests, tmp_path / "r", "--amp", "fp8"))
    with pytest.raises(ValueError, match="--amp='fp8' \\(choose one of off, bf16\\)"):
        train(config(manifests, tmp_path / "r", amp="fp8"))


class FactoriesWithoutDevice(TorchFunctionMode):
    """Records tensors made from scratch without ``device=``: on a GPU they land on the CPU."""

    FACTORIES = (torch.arange, torch.zeros, torch.ones, torch.full, torch.tensor, torch.empty)

    def __init__(self) -> None:
        super().__init__()
        self.calls: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FACTORIES and kwargs.get("device") is None:
            frame = [f for f in traceback.extract_stack() if "amhelpers" in f.filename][-1]
            self.calls.add(f"{func.__name__} at {Path(frame.filename).name}:{frame.lineno}")
        return func(*args, **kwargs)


def forward_backward(model: MiniVoice) -> None:
    batch = collate(synthetic_rows(4, 0, "x"))
    out = model(**{k: batch[k] for k in ("text_ids", "text_lengths", "codes", "code_lengths")},
                guide_sigma=0.2)
    (out["text_loss"] + out["mel_loss"] + out["guide_loss"]).backward()


def test_the_trainers_forward_makes_every_tensor_on_the_training_device():
    """The CPU stand-in for a GPU run: the trainer runs the forward inside ``on_device``, whose
    ``torch.device`` context gives any tensor made without ``device=`` the run's device."""
    model = MiniVoice(MiniVoiceConfig(**TINY))
    assert on_device(torch.device("cpu")).__class__.__name__ == "nullcontext"
    assert on_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    with FactoriesWithoutDevice() as probe, torch.device("cpu"):  # what on_device does off CPU
        forward_backward(model)
    assert sorted(probe.calls) == []


def test_the_models_forward_and_generation_make_every_tensor_on_the_inputs_device():
    """Positions, padding and prompts are made with ``device=`` (a CPU tensor beside CUDA ones
    would fail at the first step on a GPU), in training and in generation."""
    model = MiniVoice(MiniVoiceConfig(**TINY))
    batch = collate(synthetic_rows(4, 0, "x"))  # the data loader's tensors live on the CPU
    inputs = {k: batch[k] for k in ("text_ids", "text_lengths", "codes", "code_lengths")}
    with FactoriesWithoutDevice() as probe:
        out = model(**inputs, guide_sigma=0.2)
        (out["text_loss"] + out["mel_loss"] + out["guide_loss"]).backward()
        model.generate([3, 4, 5], max_len=4)
        model.generate_batch([[3, 4], [5]], max_len=4)
    assert sorted(probe.calls) == []

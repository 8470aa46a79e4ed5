"""The trainer never replaces or loses a run's files by mistake (issue 10, item 4), and a bad
output folder is a one-line error (item 5).

- a resume from an older checkpoint keeps the checkpoint it writes and ``latest.json`` names a
  file that exists (pruning is by step, never the checkpoint just written);
- a fresh run refuses a folder holding another run's ``config.json`` / ``metrics.jsonl``
  unless ``--overwrite``; so does a resume from elsewhere, or from an older checkpoint;
- two runs in one folder: the second is refused, naming the folder and the holder's PID; the
  lock goes with the holder, even after ``kill -9``;
- temporary files of killed atomic writes are removed at start (only ours).

Tiny model and synthetic manifests from ``test_train`` keep each run to about a second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import TINY, config, synthetic_rows

from amhelpers import __main__ as cli
from amhelpers.data import write_manifest
from amhelpers.io import atomic_write
from amhelpers.train import latest_checkpoint, train


@pytest.fixture
def manifests(tmp_path) -> tuple[Path, Path]:
    return (write_manifest(tmp_path / "train.jsonl", synthetic_rows(64, 0, "tr")),
            write_manifest(tmp_path / "val.jsonl", synthetic_rows(16, 1, "va")))


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def cli_args(manifests, out: Path, *extra: str) -> list[str]:
    return ["train", "--train-manifest", str(manifests[0]), "--output-dir", str(out),
            "--max-steps", "2", "--batch-size", "8", "--warmup-steps", "1", "--no-progress",
            "--model-dim", "32", "--layers", "2", "--heads", "2", "--number-text-tokens", "30",
            "--number-mel-codes", "18", *extra]


# ------------------------------------------------------------------- (a) pruning by step
def test_resume_keeps_the_checkpoint_it_writes_beside_a_user_copy(manifests, tmp_path):
    """A copy named ckpt_best.pt sorted after every step by name: keep_last=1 then pruned the
    checkpoint just written and latest.json named a missing file."""
    out = tmp_path / "run"
    first = train(config(manifests, out, max_steps=4, save_every=4, keep_last=1))
    shutil.copy(first["checkpoint"], out / "ckpt_best.pt")
    result = train(config(manifests, out, max_steps=8, save_every=4, keep_last=1,
                          resume="auto"))
    assert Path(result["checkpoint"]).is_file() and result["step"] == 8
    latest = json.loads(read(out / "latest.json"))["checkpoint"]
    assert (out / latest).is_file() and latest == "ckpt_00000008.pt"
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == ["ckpt_00000008.pt", "ckpt_best.pt"]
    assert latest_checkpoint(out) == out / "ckpt_00000008.pt"


def test_resume_from_an_older_checkpoint_needs_overwrite(manifests, tmp_path):
    out = tmp_path / "run"
    train(config(manifests, out, max_steps=12, save_every=4, keep_last=3))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    old = out / "ckpt_00000004.pt"
    with pytest.raises(ValueError, match=r"holds 2 checkpoint\(s\) newer than the one resumed "
                                         r"\(step 4\): ckpt_00000008.pt, ckpt_00000012.pt.*"
                                         r"--overwrite"):
        train(config(manifests, out, max_steps=6, save_every=1, keep_last=1, resume=str(old)))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

    cfg = config(manifests, out, max_steps=6, save_every=1, keep_last=1, resume=str(old))
    cfg.overwrite = True
    result = train(cfg)
    assert result["step"] == 6 and Path(result["checkpoint"]).is_file()
    assert [p.name for p in out.glob("ckpt_*.pt")] == ["ckpt_00000006.pt"]
    assert json.loads(read(out / "latest.json"))["checkpoint"] == "ckpt_00000006.pt"
    steps = [json.loads(x)["step"] for x in read(out / "metrics.jsonl").splitlines()]
    assert max(steps) == 6  # the replaced future's metrics are gone too


# ------------------------------------------------------------- (b) another run's files
def test_fresh_run_refuses_a_folder_with_another_runs_files(manifests, tmp_path, capsys):
    """A run killed before its first checkpoint leaves config.json and metrics.jsonl."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"mine": 1}\n', encoding="utf-8")
    (out / "metrics.jsonl").write_text('{"split": "train", "step": 7}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"already holds another run \(config.json, "
                                         r"metrics.jsonl\).*--overwrite"):
        train(config(manifests, out))
    assert cli.main(cli_args(manifests, out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite to replace it" in err and str(out) in err
    assert read(out / "config.json") == '{"mine": 1}\n'
    assert read(out / "metrics.jsonl") == '{"split": "train", "step": 7}\n'

    assert cli.main(cli_args(manifests, out, "--overwrite")) == 0
    assert json.loads(read(out / "config.json"))["train"]["overwrite"] is True
    assert all(json.loads(x)["step"] <= 2 for x in read(out / "metrics.jsonl").splitlines())


def test_overwrite_deletes_the_old_runs_checkpoints(manifests, tmp_path):
    out = tmp_path / "run"
    train(config(manifests, out, max_steps=8, save_every=4, keep_last=3))
    with pytest.raises(ValueError, match=r"2 checkpoint\(s\), newest ckpt_00000008.pt"):
        train(config(manifests, out, max_steps=2))
    cfg = config(manifests, out, max_steps=2, save_every=1, keep_last=3)
    cfg.overwrite = True
    train(cfg)
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == ["ckpt_00000001.pt",
                                                            "ckpt_00000002.pt"]
    assert latest_checkpoint(out) == out / "ckpt_00000002.pt"


def test_resume_from_elsewhere_into_another_run_needs_overwrite(manifests, tmp_path):
    a = train(config(manifests, tmp_path / "a", max_steps=4, save_every=4))
    train(config(manifests, tmp_path / "b", max_steps=2, save_every=2))
    with pytest.raises(ValueError, match=r"holds another run .*not the run of --resume"):
        train(config(manifests, tmp_path / "b", max_steps=6, resume=a["checkpoint"]))
    assert latest_checkpoint(tmp_path / "b") == tmp_path / "b" / "ckpt_00000002.pt"
    # into a new folder it is a branch of run a: allowed
    assert train(config(manifests, tmp_path / "c", max_steps=6, resume=a["checkpoint"]))[
        "step"] == 6


def test_resume_auto_without_checkpoint_starts_that_run_over(manifests, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}", encoding="utf-8")
    result = train(config(manifests, out, max_steps=2, resume="auto"))
    assert result["step"] == 2
    assert "no checkpoint to resume" in capsys.readouterr().err


def test_resume_drops_a_metrics_line_cut_short_and_the_lost_steps(manifests, tmp_path):
    """A run killed while appending leaves half a line; the resumed log is clean JSON again."""
    out = tmp_path / "run"
    train(config(manifests, out, max_steps=4, save_every=4))
    rows = [json.loads(x) for x in read(out / "metrics.jsonl").splitlines()]
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"split": "train", "step": 6, "text_loss": 1.0}\n{"split": "tra')
    with pytest.warns(UserWarning, match=r"skipped 1 malformed line \(line \d+\)"):
        train(config(manifests, out, max_steps=8, save_every=4, resume="auto"))
    after = [json.loads(x) for x in read(out / "metrics.jsonl").splitlines()]
    assert after[:len(rows)] == rows  # what the first attempt logged up to step 4 is kept
    assert [r["step"] for r in after[len(rows):] if r["split"] == "train"] == [6, 8]


# ------------------------------------------------------------------------- (c) the lock
HOLDER = """
import json, sys
from amhelpers.train import TrainConfig, train

def hold(model, optimizer, step):
    print("training", flush=True)
    sys.stdin.read()  # hold the run (and its lock) until killed

train(TrainConfig(train_manifest=sys.argv[1], output_dir=sys.argv[2], max_steps=4, batch_size=8,
                  progress=False, model=json.loads(sys.argv[3])), on_step=hold)
"""


def test_second_run_in_one_folder_is_refused_and_kill_releases_the_lock(manifests, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(manifests[0]), str(out),
                               json.dumps(TINY)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "training"  # inside its first step
        holder_config = read(out / "config.json")
        with pytest.raises(RuntimeError, match=rf"--output-dir {out} is in use by another run "
                                               rf"\(PID {holder.pid}, holding .*\.lock\)"):
            train(config(manifests, out, max_steps=2, resume="auto"))
        assert read(out / "config.json") == holder_config and not list(out.glob("ckpt_*"))
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs in the holder
        holder.wait()
    # the OS released the lock; the killed run had no checkpoint, so resume auto starts over
    assert train(config(manifests, out, max_steps=2, resume="auto"))["step"] == 2
    assert read(out / ".lock").strip() == str(os.getpid())


def test_lock_is_released_when_a_run_fails(manifests, tmp_path):
    out = tmp_path / "run"

    def boom(model, optimizer, step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(manifests, out, max_steps=4), on_step=boom)
    assert train(config(manifests, out, max_steps=4, resume="auto"))["step"] == 4


# ------------------------------------------------------------- (d) stale temporary files
def test_stale_temporary_files_of_killed_writes_are_removed(manifests, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with atomic_write(out / "ckpt_00000004.pt", "wb") as fh:  # the name atomic_write uses
        ours = sorted(p.name for p in out.iterdir())
        fh.write(b"x")
    (out / "ckpt_00000004.pt").unlink()
    stale = [ours[0], ".ckpt_00000008.pt.k2_9zq0a.tmp", ".metrics.jsonl.abcdefgh.tmp"]
    for name in stale:
        (out / name).write_bytes(b"\0" * 1000)
    kept = [".notes.tmp", "draft.tmp", ".x.ABCDEFGH.tmp", ".y.abc.tmp"]  # not atomic_write's
    for name in kept:
        (out / name).write_text("user", encoding="utf-8")
    result = train(config(manifests, out, max_steps=2))
    assert result["removed_temp_files"] == 3
    assert "removed 3 temporary file(s)" in capsys.readouterr().err
    assert not any((out / name).exists() for name in stale)
    assert all(read(out / name) == "user" for name in kept)


# --------------------------------------------------------------- item 5: output folder
def test_output_dir_that_is_a_file_or_under_one_is_a_one_line_error(manifests, tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("keep", encoding="utf-8")
    for out, words in ((a_file, "is a file, not a folder"),
                       (a_file / "sub", "is a file, not a folder")):
        assert cli.main(cli_args(manifests, out)) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --output-dir {out}") and words in err
        assert err.count("\n") == 1
    assert read(a_file) == "keep"


def test_unwritable_output_dir_is_a_one_line_error(manifests, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root writes anyway: make the permission check say no
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == locked
                            else real(path, mode, **kw))
    try:
        assert cli.main(cli_args(manifests, locked / "run")) == 2
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output-dir {locked / 'run'}") and "not writable" in err
    assert err.count("\n") == 1 and not (locked / "run").exists()


# ------------------------------------------------- the course's cached runs pass the flags
def test_embedded_base_model_replaces_only_its_own_unfinished_run(tmp_path, monkeypatch):
    """embedded.base_model reruns into its cached folder: with no checkpoint (a run of the same
    settings killed before its first save) it passes --overwrite; with one it resumes."""
    from amhelpers import embedded
    from amhelpers.data import meta_path

    calls = []

    def fake_manifest(p, lang, split, tokenizer=None, progress=True, limit=None):
        path = tmp_path / "manifests" / f"{lang}_{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        meta_path(path).write_text(json.dumps({"key": f"data-{split}"}))
        return path

    def killed_before_first_save(cfg):
        calls.append(cfg)
        (Path(cfg.output_dir) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "manifest", fake_manifest)
    monkeypatch.setattr(embedded, "base_tokenizer", lambda p: tmp_path / "tok.model")
    monkeypatch.setattr("amhelpers.train.train", killed_before_first_save)
    p = embedded.profile("quick")
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            embedded.base_model(p, progress=False)
    assert [(c.resume, c.overwrite) for c in calls] == [(None, True), (None, True)]
    (Path(calls[-1].output_dir) / "ckpt_00000050.pt").write_bytes(b"w")
    with pytest.raises(KeyboardInterrupt):
        embedded.base_model(p, progress=False)
    assert (calls[-1].resume, calls[-1].overwrite) == ("auto", False)

"""A run killed with SIGKILL at 22 points resumes to the same bits as a run never interrupted.

The kill points cover the whole of a step's life: right after an optimizer step (before its log
line, validation or checkpoint), in the middle of validation, while a checkpoint is being written
(its temporary file complete, not yet renamed), and between a checkpoint's rename and the
``latest.json`` that names it. Each invocation is a fresh process that resumes the folder as
``embedded.base_model`` does (``--resume auto``, or a fresh start when no checkpoint exists).
The run that was never interrupted runs the same way, in a process of its own, with the same
thread count. Tiny model and synthetic manifests of ``test_train``: about a minute in all.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import assert_identical, config, synthetic_rows

from amhelpers.data import write_manifest

# One process of the run: resume the folder if it holds a checkpoint, then train; SIGKILL itself
# at the point named by argv[2:] (none: run to the end).
WORKER = r'''
import json, os, signal, sys
import torch
torch.set_num_threads(1)
import amhelpers.io
import amhelpers.train as t
from amhelpers.trainconfig import TrainConfig

cfg = TrainConfig(**json.loads(open(sys.argv[1]).read()))
kind, n = (sys.argv[2], int(sys.argv[3])) if len(sys.argv) > 3 else ("none", 0)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

seen = {"replace": 0, "val": 0}
real_replace = os.replace
def replace(src, dst, *a, **k):
    name = os.path.basename(str(dst))
    if kind in ("ckpt-write", "latest-write"):
        wanted = "ckpt_" if kind == "ckpt-write" else "latest.json"
        if name.startswith(wanted):
            seen["replace"] += 1
            if kind == "ckpt-write" and seen["replace"] == n:
                die()  # the temporary file is complete; the rename never happens
            if kind == "latest-write" and seen["replace"] == n:
                die()  # the checkpoint was renamed; latest.json still names the one before
    return real_replace(src, dst, *a, **k)
amhelpers.io.os.replace = replace

real_val = t.validation_loss
def validation(*a, **k):
    seen["val"] += 1
    if kind == "val" and seen["val"] == n:
        die()
    return real_val(*a, **k)
t.validation_loss = validation

steps = {"done": 0}
def on_step(model, optimizer, step):
    steps["done"] += 1
    if kind == "step" and steps["done"] == n:
        die()

resume = "auto" if t.latest_checkpoint(cfg.output_dir) else None
cfg.resume, cfg.overwrite = resume, resume is None
t.train(cfg, on_step=on_step)
'''

# (kind, n): kill after the n-th optimizer step, at the n-th validation, checkpoint rename or
# latest.json rename of that process (counted from where it resumed, so each kill happens: the
# run is long enough, 80 steps, for all of them). 22 kills, then one process runs to the end.
KILLS = [("step", 1), ("ckpt-write", 1), ("step", 3), ("val", 1), ("step", 2), ("ckpt-write", 2),
         ("latest-write", 1), ("step", 4), ("val", 2), ("step", 1), ("ckpt-write", 1), ("step", 3),
         ("latest-write", 2), ("step", 5), ("val", 1), ("step", 2), ("ckpt-write", 3), ("step", 4),
         ("step", 1), ("latest-write", 1), ("step", 3), ("ckpt-write", 1)]
STEPS = 80


def _process(cfg_file: Path, *kill: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WORKER, str(cfg_file), *map(str, kill)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_at_22_points_resumes_bit_identically(tmp_path):
    manifests = (write_manifest(tmp_path / "train.jsonl", synthetic_rows(48, 0, "tr")),
                 write_manifest(tmp_path / "val.jsonl", synthetic_rows(8, 1, "va")))
    runs = {}
    for name in ("straight", "killed"):
        cfg = config(manifests, tmp_path / name, max_steps=STEPS, save_every=2, val_every=4,
                     log_every=1, keep_last=3, model={**config(manifests, tmp_path).model,
                                                      "dropout": 0.1})
        runs[name] = tmp_path / f"{name}.json"
        runs[name].write_text(json.dumps(dataclasses.asdict(cfg)))
    straight = _process(runs["straight"])
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed_at = []
    for kill in KILLS:
        proc = _process(runs["killed"], *kill)
        assert proc.returncode == -9, (kill, proc.returncode, proc.stderr[-2000:])
        killed_at.append(kill)
    assert len(killed_at) >= 20
    final = _process(runs["killed"])
    assert final.returncode == 0, final.stderr[-2000:]

    a, b = tmp_path / "straight", tmp_path / "killed"
    last = f"ckpt_{STEPS:08d}.pt"
    ckpt_a, ckpt_b = (torch.load(x / last, weights_only=True) for x in (a, b))
    assert_identical(ckpt_a["model"], ckpt_b["model"])
    for state_a, state_b in zip(ckpt_a["train_state"]["optimizer"]["state"].values(),
                                ckpt_b["train_state"]["optimizer"]["state"].values()):
        assert_identical(state_a, state_b)

    def val_losses(folder: Path) -> list[tuple[int, float]]:
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["mel_loss"]) for r in rows if r.get("split") == "val"]

    assert val_losses(a) == val_losses(b)  # the log holds each step once, with the same values
    assert not list(b.glob("*.tmp*"))  # no temporary file of a killed write is left behind

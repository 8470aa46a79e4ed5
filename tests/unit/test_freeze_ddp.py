"""amhelpers.freeze under DistributedDataParallel: 2 CPU processes, gloo (issue 10 item 11).

The test starts this file twice as a script (rank 0 and rank 1, one thread each). Each rank
trains a tiny model with ``text_embedding``/``text_head`` tables under DDP on its own batches,
in exact and exact-sparse mode (AdamW with weight decay, gradient clipping), saves a checkpoint
with the optimizer state, restores it into a fresh DDP model and trains on. Rank 0's parent
(the test) then checks, from what each rank wrote, that the base rows are bit-identical to the
original on both ranks and that the tables are equal across ranks, after training and after
the resume; each rank also checks that the resumed run matches the uninterrupted one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

ROWS, DIM, BASE, WORLD, STEPS = 20, 8, 12, 2, 3
MODES = ("exact", "exact-sparse")
TABLES = ("text_embedding.weight", "text_head.weight", "text_head.bias")
TIMEOUT_S = 120  # both ranks together; a hang fails the test instead of blocking CI


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.text_embedding = nn.Embedding(ROWS, DIM)
        self.body = nn.Sequential(nn.Linear(DIM, DIM), nn.GELU())
        self.text_head = nn.Linear(DIM, ROWS)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.text_head(self.body(self.text_embedding(ids)))
        return F.cross_entropy(logits.flatten(0, 1), ids.roll(1, 1).flatten())


def tables(model: nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {n: state[n].detach().clone() for n in TABLES}


# ----------------------------------------------------------------------------- one rank
def _train(ddp: nn.Module, opt: torch.optim.Optimizer, rank: int, first_step: int) -> None:
    for step in range(first_step, first_step + STEPS):
        gen = torch.Generator().manual_seed(1000 * rank + step)  # each rank its own batch
        ids = torch.randint(0, ROWS, (4, 6), generator=gen)
        opt.zero_grad()
        ddp(ids).backward()
        # clip what the optimizer holds (exact-sparse: the leaves, views of the tables' rows)
        nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 0.1)
        opt.step()


def _freeze(ddp: nn.Module, mode: str):
    from amhelpers.freeze import freeze_base_rows

    handle = freeze_base_rows(ddp, BASE, mode=mode)  # names match inside DDP's "module."
    opt = torch.optim.AdamW(handle.parameters(ddp), lr=1e-2, weight_decay=0.1)
    handle.attach(opt)
    return handle, opt


def _run_mode(mode: str, rank: int, folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    ddp = DDP(Tiny())
    original = tables(ddp.module)
    handle, opt = _freeze(ddp, mode)
    _train(ddp, opt, rank, 0)
    handle.verify()
    after_train = tables(ddp.module)

    checkpoint = folder / f"{mode}.pt"
    if rank == 0:
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"model": ddp.module.state_dict(), "optimizer": opt.state_dict()}, tmp)
        tmp.replace(checkpoint)
    dist.barrier()
    saved = torch.load(checkpoint, weights_only=True)

    _train(ddp, opt, rank, STEPS)  # the uninterrupted run, for comparison
    uninterrupted = tables(ddp.module)

    # a fresh model whose init differs from the checkpoint, under DDP's other gradient layout
    # (gradients are views of the all-reduce buckets, so DDP swaps the tables' .grad tensors)
    torch.manual_seed(1 + rank)
    if mode == "exact":  # load, wrap, freeze: the usual order
        fresh = Tiny()
        fresh.load_state_dict(saved["model"])
        ddp2 = DDP(fresh, gradient_as_bucket_view=True)
        handle2, opt2 = _freeze(ddp2, mode)
    else:  # wrap, freeze, then load: the handle re-snapshots on load
        ddp2 = DDP(Tiny(), gradient_as_bucket_view=True)
        handle2, opt2 = _freeze(ddp2, mode)
        ddp2.module.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["optimizer"])
    _train(ddp2, opt2, rank, STEPS)
    handle2.verify()
    after_resume = tables(ddp2.module)
    for name in TABLES:
        assert torch.equal(after_resume[name], uninterrupted[name]), \
            f"{mode} rank {rank}: {name} after the resume differs from the uninterrupted run"
    return {"original": original, "after_train": after_train, "after_resume": after_resume}


def worker(rank: int, port: int, folder: Path) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUT_S // 2))
    try:
        out = {mode: _run_mode(mode, rank, folder) for mode in MODES}
        tmp = folder / f"rank{rank}.tmp"
        torch.save(out, tmp)
        tmp.replace(folder / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- in process
def test_exact_sparse_leaf_follows_a_table_gradient_swapped_during_backward():
    """What DDP's gradient_as_bucket_view does, in one process: ``.grad`` replaced by another
    tensor after the freeze hook handed the leaf a view; the leaf must end on the new one."""
    from amhelpers.freeze import freeze_base_rows

    torch.manual_seed(0)
    model = Tiny()
    handle = freeze_base_rows(model, BASE, mode="exact-sparse")
    handle.attach(torch.optim.AdamW(handle.parameters(model), lr=1e-2))
    buckets = {}

    def swap(param: torch.Tensor) -> None:  # runs after the freeze hook, like DDP's
        buckets[id(param)] = param.grad.clone()
        param.grad = buckets[id(param)]

    for name in TABLES:
        model.get_parameter(name).register_post_accumulate_grad_hook(swap)
    model(torch.randint(0, ROWS, (4, 6))).backward()
    for name in TABLES:
        grad = model.get_parameter(name).grad
        assert grad is buckets[id(model.get_parameter(name))]
        assert handle.leaves[name].grad.data_ptr() == grad[BASE:].data_ptr(), name


# ----------------------------------------------------------------------------- 2 processes
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(env: dict[str, str], port: int, folder: Path) -> list[str]:
    """Run both ranks; their output (a rank that failed says why, its result file missing)."""
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(port), str(folder)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in range(WORLD)]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        logs = [proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
                for proc in procs]
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        logs = [proc.communicate()[0] for proc in procs]
        pytest.fail(f"DDP workers did not finish in {TIMEOUT_S} s:\n" + "\n".join(logs)[-4000:])
    return [log + f"\n(exit status {proc.returncode})" for proc, log in zip(procs, logs)]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


@pytest.mark.skipif(not torch.distributed.is_available() or
                    not torch.distributed.is_gloo_available(),
                    reason="torch built without distributed/gloo")
def test_exact_modes_keep_base_rows_under_ddp_and_resume(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                       str(Path(__file__).parents[2])]))}
    for attempt in range(2):  # a second try if another process took the free port first
        logs = _launch(env, _free_port(), tmp_path)
        if attempt or not any("address already in use" in log.lower() for log in logs):
            break
    for rank, log in enumerate(logs):
        assert log.endswith("(exit status 0)"), f"rank {rank} failed:\n{log[-4000:]}"

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for mode in MODES:
        original = ranks[0][mode]["original"]
        for stage in ("after_train", "after_resume"):
            for name in TABLES:
                rows = [r[mode][stage][name] for r in ranks]
                for rank, value in enumerate(rows):
                    assert torch.equal(_bits(value[:BASE]), _bits(original[name][:BASE])), \
                        f"{mode} {stage}: base rows of {name} moved on rank {rank}"
                    assert not torch.equal(value[BASE:], original[name][BASE:]), \
                        f"{mode} {stage}: new rows of {name} did not train on rank {rank}"
                assert torch.equal(_bits(rows[0]), _bits(rows[1])), \
                    f"{mode} {stage}: {name} differs between the ranks"


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))

"""Fixtures shared by the unit tests."""

from pathlib import Path

import pytest
import torch

from amhelpers import corpus
from amhelpers import tokenizer as tk


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is several times faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def en_base(tmp_path_factory, hornmt_dir) -> Path:
    """A small English BPE base, as in the embedded default (trained once per session)."""
    out = tmp_path_factory.mktemp("tok") / "en.model"
    return tk.train_base(corpus.split_lines("eng", "train"), "eng", 300, out, model="bpe")


@pytest.fixture(scope="session")
def extended(tmp_path_factory, en_base) -> Path:
    """``en_base`` extended with 800 Amharic pieces (chapter 1's recipe)."""
    out = tmp_path_factory.mktemp("tok") / "en_amh.model"
    tk.extend(en_base, corpus.split_lines("amh", "train"), "amh", 800, out)
    return out

# Stand-in notebooks that tests execute themselves with papermill, not nbval.
collect_ignore_glob = ["data/*.ipynb"]

"""Phoneme error rate (PER): an automatic intelligibility measure for generated speech.

TTS papers report the error rate of a speech recogniser on their outputs. Amharic has no offline
recogniser here, so the course trains one: a small CTC phoneme recogniser (two convolutions, a
bidirectional GRU) on the **codec round trip** of espeak-ng's reference speech: each code's
centroid (the ``stack`` log-mel frames it decodes to), so it hears what generated speech is
made of. Labels are espeak-ng's own phonemes (``espeak-ng -x``, stress marks dropped), so the
recogniser is as good as espeak-ng's reading rules, no better.

The PER of a system is the edit distance between the recognised phonemes of its output and the
phonemes of the sentence, over the phonemes of the sentence (``jiwer.wer`` on phoneme
sequences). It is validated by its floor and ceiling on the same sentences: the round trip of
the reference (low: what a perfect system would score) and random codes (near 100%).

    embedded.generation_metrics(checkpoint, p, lang, per=True)["per"]   # the embedded default
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

BLANK = "<blank>"
RECOGNIZER_FORMAT = 2
_STRESS = str.maketrans("", "", "',")


# ---------------------------------------------------------------------------------- labels
def phonemize(texts: Sequence[str], lang: str, jobs: int = 2, progress: bool = False,
              cache: Path | None = None) -> list[list[str]]:
    """espeak-ng's phonemes of each text (``-x``, one token per phoneme, stress dropped).

    Results are cached in ``<home>/phonemes/<voice>.json`` by text.

    Raises:
        RuntimeError: espeak-ng or its voice is missing, or it fails on a text.
    """
    from tqdm.auto import tqdm

    from .io import write_text_atomic
    from .settings import home
    from .speech import check_voice, voice_for

    voice = voice_for(lang)
    path = (cache or home() / "phonemes") / f"{voice}.json"
    known: dict[str, list[str]] = json.loads(path.read_text()) if path.is_file() else {}
    todo = sorted({t for t in texts if t not in known})
    if todo:
        exe = check_voice(voice)

        def one(text: str) -> list[str]:
            run = subprocess.run([exe, "-q", "-v", voice, "-x", "--sep= ", text],
                                 capture_output=True, timeout=60)
            # -x writes espeak-ng's ASCII phoneme names, but a character it cannot name comes
            # out as a raw byte: decode leniently rather than fail on one phrase
            out = run.stdout.decode("utf-8", "replace")
            if run.returncode != 0:
                raise RuntimeError(f"espeak-ng -x failed on {text!r}: "
                                   f"{run.stderr.decode('utf-8', 'replace').strip()}")
            return [tok for tok in out.translate(_STRESS).split() if tok]

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for text, phones in zip(todo, tqdm(pool.map(one, todo), total=len(todo),
                                               desc=f"phonemes {voice}", disable=not progress)):
                known[text] = phones
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(known, ensure_ascii=False))
    return [known[t] for t in texts]


def phoneme_error_rate(references: Sequence[Sequence[str]],
                       hypotheses: Sequence[Sequence[str]]) -> float:
    """Edits (substitutions, deletions, insertions) over reference phonemes, all pooled."""
    import jiwer

    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"{len(references)} references and {len(hypotheses)} hypotheses: give "
                         "one hypothesis per reference, at least one")
    refs = [" ".join(r) for r in references]
    if any(not r for r in refs):
        raise ValueError("a reference has no phonemes: drop that sentence")
    hyps = [" ".join(h) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))


# ---------------------------------------------------------------------------------- model
def _model(n_in: int, n_out: int, hidden: int = 128):
    import torch
    from torch import nn

    class Recognizer(nn.Module):
        """Two convolutions -> 2-layer BiGRU -> phoneme logits per code (CTC, blank 0)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv1d(n_in, hidden, 3, padding=1), nn.GELU(),
                                      nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU())
            self.rnn = nn.GRU(hidden, hidden, num_layers=2, batch_first=True, bidirectional=True,
                              dropout=0.1)
            self.out = nn.Linear(2 * hidden, n_out)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, F] -> [B, T', V]
            h = self.conv(x.transpose(1, 2)).transpose(1, 2)
            return self.out(self.rnn(h)[0])

    return Recognizer()


def _features(book: Any, codes: Sequence[int], stats: dict[str, np.ndarray]) -> np.ndarray:
    """One vector per code: its centroid (``stack`` mel frames), standardised."""
    c = np.asarray(codes, dtype=np.int64) if len(codes) else np.zeros(1, np.int64)
    return ((book.centroids[c] - stats["mean"]) / stats["std"]).astype(np.float32)


def train_recognizer(book: Any, codes: Sequence[Sequence[int]], labels: Sequence[Sequence[str]],
                     steps: int, batch_size: int = 16, seed: int = 0, lr: float = 2e-3,
                     progress: bool = False) -> dict[str, Any]:
    """Train a CTC phoneme recogniser on the centroids of ``codes`` (one list per utterance).

    Returns:
        ``state`` (weights), ``vocab`` (phonemes; index 0 is the blank), ``stats`` (feature
        mean and std), ``n_in``, ``losses`` (the mean CTC loss of each tenth of the run).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a GRU this small runs faster on one thread than on two that wait
    try:
        return _train(book, codes, labels, steps, batch_size, seed, lr, progress)
    finally:
        torch.set_num_threads(threads)


def _train(book: Any, codes: Sequence[Sequence[int]], labels: Sequence[Sequence[str]],
           steps: int, batch_size: int, seed: int, lr: float, progress: bool) -> dict[str, Any]:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vocab = [BLANK, *sorted({ph for lab in labels for ph in lab})]
    index = {ph: i for i, ph in enumerate(vocab)}
    sample = np.concatenate([book.centroids[np.asarray(c, dtype=np.int64)]
                             for c in codes[: min(len(codes), 300)]])
    stats = {"mean": sample.mean(0), "std": sample.std(0) + 1e-5}
    feats = [_features(book, c, stats) for c in codes]
    targets = [[index[ph] for ph in lab] for lab in labels]
    keep = [i for i in range(len(feats))
            if targets[i] and len(feats[i]) >= 2 * len(targets[i]) + 1]  # one output per code
    if not keep:
        raise ValueError("no utterance is long enough for its phonemes: check the codes")
    model = _model(feats[0].shape[1], len(vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)
    losses, chunk = [], []
    model.train()
    from tqdm.auto import trange

    for _step in trange(steps, desc="phoneme recogniser", disable=not progress):
        batch = rng.choice(keep, size=min(batch_size, len(keep)), replace=False)
        lens = torch.tensor([len(feats[i]) for i in batch])
        x = torch.zeros(len(batch), int(lens.max()), feats[0].shape[1])
        for j, i in enumerate(batch):
            x[j, : len(feats[i])] = torch.from_numpy(feats[i])
        y = torch.tensor([t for i in batch for t in targets[i]])
        y_lens = torch.tensor([len(targets[i]) for i in batch])
        logp = model(x).log_softmax(-1).transpose(0, 1)  # [T', B, V]
        loss = ctc(logp, y, lens, y_lens)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        chunk.append(loss.item())
        if len(chunk) == max(1, steps // 10):
            losses.append(float(np.mean(chunk)))
            chunk = []
    return {"state": model.state_dict(), "vocab": vocab, "stats": stats,
            "n_in": feats[0].shape[1], "losses": losses}


def recognize(recognizer: dict[str, Any], book: Any,
              codes: Sequence[Sequence[int]]) -> list[list[str]]:
    """Greedy CTC decoding of each utterance's codes: the phonemes the recogniser hears."""
    import torch

    model = _model(recognizer["n_in"], len(recognizer["vocab"]))
    model.load_state_dict(recognizer["state"])
    model.eval()
    out = []
    with torch.no_grad():
        for c in codes:
            x = torch.from_numpy(_features(book, c, recognizer["stats"]))[None]
            best = model(x)[0].argmax(-1).tolist()
            phones, prev = [], 0
            for k in best:
                if k != prev and k != 0:
                    phones.append(recognizer["vocab"][k])
                prev = k
            out.append(phones)
    return out


# ------------------------------------------------------------------------ cached recogniser
def load_or_train(book: Any, manifest: str | Path, lang: str, steps: int, seed: int, folder: Path,
                  progress: bool = False) -> dict[str, Any]:
    """A recogniser for ``lang`` trained on every row of ``manifest`` (its texts' phonemes, its
    codes' centroids), cached in ``folder`` by the manifest, codec, steps and seed.

    Stored as ``<lang>-<key>.npz`` (weights as arrays, vocabulary and statistics as JSON), so
    reading it back runs no pickle.
    """
    import torch

    from .data import read_manifest
    from .io import atomic_write, sha256_file

    key = hashlib.sha256(json.dumps([RECOGNIZER_FORMAT, sha256_file(manifest), book.config_hash(),
                                     steps, seed]).encode()).hexdigest()[:12]
    path = Path(folder) / f"{lang}-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return {"state": {k[2:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("w/")},
                    "stats": {"mean": z["stats_mean"], "std": z["stats_std"]}, **meta}
    rows = read_manifest(manifest)
    labels = phonemize([r["text"] for r in rows], lang, progress=progress)
    result = train_recognizer(book, [r["codes"] for r in rows], labels, steps, seed=seed,
                              progress=progress)
    meta = {k: result[k] for k in ("vocab", "n_in", "losses")}
    arrays = {f"w/{k}": v.detach().numpy() for k, v in result["state"].items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), stats_mean=result["stats"]["mean"],
                 stats_std=result["stats"]["std"], **arrays)
    return result


def evaluate(rec: dict[str, Any], book: Any, lang: str, codes: Sequence[Sequence[int]],
             texts: Sequence[str], reference_codes: Sequence[Sequence[int]] | None = None,
             seed: int = 0) -> dict[str, float]:
    """PER of generated ``codes`` against the phonemes of ``texts``.

    With ``reference_codes`` (espeak-ng's speech through the codec, one list per text), also
    the floor and ceiling on the same texts: ``per_round_trip`` (the reference's own codes)
    and ``per_random`` (random codes of the reference's length, drawn with ``seed``).

    Returns:
        ``per``, and ``per_round_trip`` and ``per_random`` when ``reference_codes`` is given.
    """
    truth = phonemize(texts, lang)
    out = {"per": phoneme_error_rate(truth, recognize(rec, book, codes))}
    if reference_codes is not None:
        rng = np.random.default_rng(seed)
        random_codes = [rng.integers(0, book.k, max(1, len(c))).tolist() for c in reference_codes]
        out["per_round_trip"] = phoneme_error_rate(truth, recognize(rec, book, reference_codes))
        out["per_random"] = phoneme_error_rate(truth, recognize(rec, book, random_codes))
    return out

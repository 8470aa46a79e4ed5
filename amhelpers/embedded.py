"""The embedded default: a miniature IndexTTS-like model pretrained on English espeak-ng speech.

Why this module is long: it is the one place that knows the embedded default's files and their
cache keys (data, codec, base model, fine-tunes, recognisers, generation metrics); split, the
layout below would be spread over several modules that each had to know it.

Every chapter that needs the base model, the codec or the manifests calls the functions here;
each builds what is missing in the work folder and reuses what is there, so any notebook can
run on its own. Layout under ``$AMHELPERS_HOME/embedded/<profile>/`` (a variant with another
target language or seed: ``<profile>-<base>-<target>``, ``<profile>-seed<n>``, see :func:`run_name`)::

    codec.npz                     frame-stacked k-means codebook (base + target train split)
    manifests/<tok>/<lang>_<split>.jsonl  (+ .meta.json with the input hash)
    runs/base/                    the English pretraining run (checkpoints, metrics, tb/)
    runs/<recipe>-<key>/          fine-tunes, keyed by their settings
    recognizers/<lang>-<key>.npz  the phoneme recognisers behind PER

"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from . import corpus, settings
from . import tokenizer as tk
from .io import sha256_file, write_text_atomic
from .recipes import Recipe
from .settings import PROFILES, Profile  # the one registry of profiles; also used as embedded.*
from .text import normalize


def profile(name: str | None = None) -> Profile:
    """Return the named profile of :data:`amhelpers.settings.PROFILES` (default
    ``$AMHELPERS_PROFILE``, else ``full``)."""
    name = name or settings.profile_name()
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
    return PROFILES[name]


def held_out_count(p: Profile) -> int:
    """How many held-out phrases the profile's test split holds (5 x ``eval_phrases``: 30 on
    quick, where tests judge generation on all of them; a correlation over 6 points is noise)."""
    return p.eval_phrases * 5

# The embedded default is a CPU course: its figures (README, notebooks) are measured on a CPU
# and a GPU would change them in the last bits, so its runs train on the CPU wherever they run.
# `python -m amhelpers train --device auto` uses a GPU for your own runs.
EMBEDDED_DEVICE = "cpu"


def run_name(p: Profile) -> str:
    """The name of ``p``'s work folder and of the notebooks' default output folders.

    A registered profile's name (``quick``, ``full``); a variant of one with another language
    pair or seed (a notebook's ``TARGET_LANG`` or ``SEED``) gets ``-<base>-<target>`` and/or
    ``-seed<n>`` appended (``quick-eng-tir``), so its codec, base model and runs never reuse or
    replace the registered profile's. Other changes keep the name (the base model's key
    retrains it); an unregistered name is used as it is.
    """
    name, ref = p.name, PROFILES.get(p.name)
    if ref is not None and (p.base_lang, p.target_lang) != (ref.base_lang, ref.target_lang):
        name += f"-{p.base_lang}-{p.target_lang}"
    if ref is not None and p.seed != ref.seed:
        name += f"-seed{p.seed}"
    return name


def folder(p: Profile) -> Path:
    """Return the profile's work folder, ``$AMHELPERS_HOME/embedded/<run_name(p)>``."""
    path = settings.home() / "embedded" / run_name(p)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _subset(items: list[str], n: int | None) -> list[str]:
    """Every k-th item so that a subset spans the whole corpus (deterministic)."""
    if n is None or n >= len(items):
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def profile_phrases(p: Profile, lang: str, split: str, limit: int | None = None) -> list[str]:
    """The phrases of ``lang``/``split`` the profile uses (deduplicated, order kept)."""
    limit = limit or {"train": p.base_train_phrases if lang == p.base_lang else p.target_train_phrases,
                      "val": p.val_phrases, "test": held_out_count(p)}[split]
    unique = list(dict.fromkeys(x for x in corpus.phrases(lang, split) if normalize(x, lang)))
    return _subset(unique, limit)


def mels_for(lang: str, texts: list[str], progress: bool = True) -> list[np.ndarray]:
    """Synthesise (cached) and return log-mels of ``texts`` in ``lang``."""
    from .codec import log_mel
    from .speech import load_wav, synthesize

    paths = synthesize(texts, lang, progress=progress)
    return [log_mel(load_wav(path)) for path in paths]


def base_tokenizer(p: Profile) -> Path:
    """The English BPE tokenizer of the base model."""
    return tk.embedded_base(p.base_vocab, p.base_lang)


def extended_tokenizer(p: Profile, naive: bool = False) -> Path:
    """The base tokenizer extended with the target language (chapter 1's recipe).

    ``naive``: the extension quick merge scripts make instead (single characters dropped,
    chapter 1), which leaves ``<unk>`` in the target text; chapter 3 trains a run on it.
    """
    name = f"{p.base_lang}_bpe{p.base_vocab}+{p.target_lang}{p.add_vocab}{'-naive' if naive else ''}"
    path = settings.home() / "tokenizers" / f"{name}.model"
    if not path.is_file():
        tk.extend(base_tokenizer(p), corpus.split_lines(p.target_lang, "train"), p.target_lang,
                  p.add_vocab, path, naive=naive)
    return path


def codec(p: Profile, progress: bool = True):
    """Return the profile's codebook, fitting it on base + target training speech when missing."""
    from .codec import Codebook

    path = folder(p) / "codec.npz"
    if path.is_file():
        return Codebook.load(path)
    mels = (mels_for(p.base_lang, profile_phrases(p, p.base_lang, "train"), progress)
            + mels_for(p.target_lang, profile_phrases(p, p.target_lang, "train"), progress))
    book = Codebook.fit(mels, k=p.codebook_k, seed=p.seed, max_vectors=p.codebook_vectors)
    book.save(path)
    return book


def manifest(p: Profile, lang: str, split: str, tokenizer: Path | None = None,
             progress: bool = True, limit: int | None = None) -> Path:
    """Return the manifest of ``lang``/``split``, building it when missing or stale.

    A manifest is rebuilt when its input hash changes: phrases, tokenizer file and codec.
    """
    from .data import build_manifest, meta_path

    tokenizer = Path(tokenizer or base_tokenizer(p))
    book = codec(p, progress)
    texts = profile_phrases(p, lang, split, limit)
    key = hashlib.sha256(json.dumps({
        "texts": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
        "tokenizer": sha256_file(tokenizer), "codec": book.config_hash(), "lang": lang,
    }, sort_keys=True).encode()).hexdigest()[:16]
    out = folder(p) / "manifests" / tokenizer.stem / f"{lang}_{split}{f'_{limit}' if limit else ''}.jsonl"
    meta = meta_path(out)
    if out.is_file() and meta.is_file() and json.loads(meta.read_text())["key"] == key:
        return out
    return build_manifest(out, texts, lang, tokenizer, book, split=split, progress=progress, key=key)


def base_model(p: Profile | None = None, progress: bool = True) -> Path:
    """Return the English base model's checkpoint, pretraining it when the work folder lacks it.

    The run is keyed by the profile's pretraining settings and its manifests' input hashes: a
    finished run of the same key is reused, an interrupted one resumes, any other is replaced.
    """
    from .data import meta_path
    from .train import TrainConfig, latest_checkpoint, train

    p = p or profile()
    run_dir = folder(p) / "runs" / "base"
    done = run_dir / "done.json"
    tok = base_tokenizer(p)
    train_manifest = manifest(p, p.base_lang, "train", tok, progress)
    val_manifest = manifest(p, p.base_lang, "val", tok, progress)
    key = hashlib.sha256(json.dumps({
        "settings": {name: getattr(p, name) for name in _PRETRAIN_FIELDS},
        "data": [json.loads(meta_path(m).read_text())["key"] for m in (train_manifest, val_manifest)],
    }, sort_keys=True).encode()).hexdigest()[:16]
    if done.is_file():
        record = json.loads(done.read_text())
        if record.get("key") == key and Path(record["checkpoint"]).is_file():
            return Path(record["checkpoint"])
    key_file = run_dir / "key.txt"
    if run_dir.exists() and (done.is_file() or not key_file.is_file() or key_file.read_text() != key):
        import shutil  # a run of other settings (or of an older version): start over

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(key_file, key)  # an interrupted run of these settings resumes
    resume = "auto" if latest_checkpoint(run_dir) else None
    cfg = TrainConfig(
        train_manifest=str(train_manifest), val_manifest=str(val_manifest),
        tokenizer=str(tok), output_dir=str(run_dir), learning_rate=p.learning_rate,
        warmup_steps=p.warmup_steps, max_steps=p.pretrain_steps,
        batch_size=p.pretrain_batch_size, val_every=p.val_every, save_every=p.pretrain_steps,
        seed=p.seed, progress=progress, resume=resume,
        # no checkpoint yet: the folder is new, or this key's run was killed before its first
        # save (its config.json / metrics.jsonl are ours to replace)
        overwrite=resume is None,
        guided_attention_weight=p.guided_attention_weight,
        device=EMBEDDED_DEVICE, model={"number_mel_codes": p.codebook_k + 2})
    result = train(cfg)
    write_text_atomic(done, json.dumps({"checkpoint": result["checkpoint"], "key": key,
                                        "profile": asdict(p), "result": result}, default=str))
    return Path(result["checkpoint"])


# Profile fields that shape the base model; a change retrains it (the data hash covers the rest).
_PRETRAIN_FIELDS = ("base_lang", "codebook_k", "pretrain_steps", "pretrain_batch_size",
                    "warmup_steps", "learning_rate", "guided_attention_weight", "val_every",
                    "seed")


def generation_metrics(checkpoint: Path, p: Profile, lang: str, tokenizer: Path | None = None,
             n: int | None = None, progress: bool = False, per: bool = False) -> dict[str, Any]:
    """Greedy generation on held-out phrases: length ratio and correlation, MCD and baselines.

    MCD compares centroid mels (codebook decode) with the reference log-mel after DTW, for the
    model's codes and for the baselines: the codec round trip (the ceiling), random codes and
    the mean frame. Lower is better; only differences within this table mean anything.

    ``length_corr_chars`` is the baseline for ``length_corr``: the correlation of reference
    length with the phrase's character count, which a model that only counts letters reaches.

    ``per=True`` adds the phoneme error rate of the outputs and its floor and ceiling on the same
    phrases (:func:`amhelpers.phonemes.evaluate`; trains the language's recogniser once).

    Returns:
        ``n``, ``length_ratio``, ``length_corr``, ``length_corr_chars``, ``mcd``,
        ``mcd_round_trip``, ``mcd_random``,
        ``mcd_mean_frame``, ``mcd_vs_random``, ``hit_cap`` (outputs that hit the length cap),
        and per-utterance rows under ``items``; with ``per``: ``per``, ``per_round_trip``,
        ``per_random``.
    """
    from .codec import baselines, mcd_dtw
    from .data import check_manifest, read_manifest
    from .model import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    model.eval()
    book = codec(p, progress)
    test_manifest = manifest(p, lang, "test", tokenizer, progress)
    check_manifest(test_manifest, book, tokenizer)
    rows = read_manifest(test_manifest)[: n or p.eval_phrases]
    texts = [r["text"] for r in rows]
    refs = mels_for(lang, texts, progress)
    import torch

    with torch.no_grad():
        generated = model.generate_batch([r["text_ids"] for r in rows])
    cap = model.config.max_mel_tokens
    items = []
    for row, ref, codes in zip(rows, refs, generated):
        mel_hat = book.decode_mel(np.asarray(codes, dtype=np.int64)) if codes else ref[:1] * 0
        items.append({"id": row["id"], "text": row["text"], "n_ref": row["n_codes"],
                      "n_gen": len(codes), "mcd": mcd_dtw(mel_hat, ref), "codes": codes})
    base = baselines(book, refs, seed=p.seed, via_audio=False)
    ref_len = np.array([i["n_ref"] for i in items], dtype=float)
    gen_len = np.array([i["n_gen"] for i in items], dtype=float)
    chars = np.array([len(r.get("norm_text") or r["text"]) for r in rows], dtype=float)
    corr, corr_chars = _corr(ref_len, gen_len), _corr(ref_len, chars)
    mcd = float(np.mean([i["mcd"] for i in items]))
    extra = {}
    if per:
        from .phonemes import evaluate

        extra = evaluate(recognizer(p, lang, progress), book, lang, [i["codes"] for i in items],
                         texts, reference_codes=[r["codes"] for r in rows], seed=p.seed)
    return {**extra, "n": len(items), "length_ratio": float(gen_len.sum() / ref_len.sum()),
            "length_corr": corr, "length_corr_chars": corr_chars, "mcd": mcd,
            "mcd_round_trip": base["round_trip"],
            "mcd_random": base["random_codes"], "mcd_mean_frame": base["mean_frame"],
            "mcd_vs_random": mcd / base["random_codes"],
            "hit_cap": int(sum(i["n_gen"] >= cap for i in items)), "items": items}


def recognizer(p: Profile, lang: str, progress: bool = False) -> dict[str, Any]:
    """The profile's phoneme recogniser for ``lang`` (:func:`amhelpers.phonemes.load_or_train`),
    trained once on the language's training split through the profile's codec."""
    from .phonemes import load_or_train

    tok = base_tokenizer(p) if lang == p.base_lang else extended_tokenizer(p)
    limit = p.base_train_phrases if lang == p.base_lang else p.target_train_phrases
    return load_or_train(codec(p, progress), manifest(p, lang, "train", tok, progress, limit),
                             lang, p.recognizer_steps, p.seed, folder(p) / "recognizers", progress)


def samples(p: Profile, generations: Mapping[str, Mapping[str, Any]], n: int = 3,
            lang: str | None = None) -> list[dict[str, Any]]:
    """The first ``n`` evaluated sentences of each run, as audio and log-mel, beside espeak-ng's.

    Args:
        p: the profile (its codec decodes the codes).
        generations: run name -> :func:`generation_metrics` (or :func:`generation`) of the same
            held-out phrases, in the same order.
        n: sentences per run.
        lang: the language of the sentences (default: the target).

    Returns:
        Per sentence: ``text``, ``reference`` {``wav``, ``mel``} and ``runs`` {name: {``wav``,
        ``mel``, ``n_gen``, ``n_ref``}}; an empty output becomes a 10 ms silence.

    Raises:
        ValueError: the runs were evaluated on different sentences.
    """
    from .codec import log_mel
    from .speech import load_wav, synthesize

    book = codec(p, progress=False)
    firsts = {name: [i["text"] for i in g["items"][:n]] for name, g in generations.items()}
    texts = next(iter(firsts.values()))
    if any(t != texts for t in firsts.values()):
        raise ValueError("samples: the runs were evaluated on different sentences; evaluate "
                         "them on the same held-out manifest")
    wavs = [load_wav(path) for path in synthesize(texts, lang or p.target_lang, progress=False)]
    mels = [log_mel(wav) for wav in wavs]  # what mels_for computes, from the wavs loaded here
    out = []
    for i, text in enumerate(texts):
        runs = {}
        for name, g in generations.items():
            item = g["items"][i]
            codes = np.asarray(item["codes"], dtype=np.int64)
            runs[name] = {"wav": book.decode(codes) if len(codes) else np.zeros(160, np.float32),
                          "mel": book.decode_mel(codes if len(codes) else np.zeros(1, np.int64)),
                          "n_gen": item["n_gen"], "n_ref": item["n_ref"]}
        out.append({"text": text, "reference": {"wav": wavs[i], "mel": mels[i]}, "runs": runs})
    return out


def attention_alignment(checkpoint: Path, rows: list[Mapping[str, Any]]) -> list[dict[str, float]]:
    """How sharply and in what order the probed heads read the text (the heads the
    guided-attention loss trains: the first head of every layer after the first).

    For each manifest row the reference codes are fed in (:meth:`MiniVoice.text_attention`);
    for each code, the text position the head attends most to is its *peak*.

    Returns:
        One dict per probed head (layers 2, 3, ...): ``peak_share``, the mean attention on the
        peak (1: one position only), and ``order_corr``, the mean over rows of the correlation
        between a code's index and its peak position (1: the text is read in order).
    """
    from .model import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    per_head: list[dict[str, list[float]]] = []
    for row in rows:
        maps = model.text_attention(row["text_ids"], row["codes"])
        for h, attn in enumerate(maps):
            attn = attn.numpy()
            peak = attn.argmax(axis=1).astype(float)
            if len(per_head) <= h:
                per_head.append({"peak_share": [], "order_corr": []})
            per_head[h]["peak_share"].append(float(attn.max(axis=1).mean()))
            per_head[h]["order_corr"].append(_corr(np.arange(len(peak), dtype=float), peak))
    return [{k: float(np.mean(v)) for k, v in head.items()} for head in per_head]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation, 0.0 when it is undefined (under 3 points or a constant series)."""
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and a.std() > 0 and b.std() > 0 else 0.0


# The layout of a fine-tune's result.json; part of every run's key, so a result written by an
# older version (lacking a field) is trained again, not read.
RESULT_FORMAT = 3


def run_folder(p: Profile, spec: Recipe, phrases: int | None = None, seed: int | None = None,
               progress: bool = False, save_every: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Where :func:`finetune` keeps the run of these settings, and what its key hashes.

    Returns:
        ``(runs/<name>-<key>, settings)``: ``settings`` holds everything that shapes the result
        (the recipe but its name, ``steps``, ``seed``, ``phrases``, batch, validation interval,
        the base model's sha256, the target language; ``save_every`` where one is given, since
        its checkpoints are the steps a quality curve can evaluate) plus ``key`` and
        ``base_checkpoint``. A finished run of the same key may sit under another name
        (:func:`finetune` reuses it).

    Raises:
        ValueError: ``phrases`` below 0.
    """
    if phrases is not None and phrases < 0:
        raise ValueError(f"phrases={phrases}: give a number of phrases > 0, 0 for every phrase, "
                         "or None for the profile's low-resource regime")
    base_ckpt = base_model(p, progress)
    # Settings added after the first cached runs enter the key only when set, so those runs
    # keep their keys.
    later = {"replay_fraction": 0.0, "freeze_layers": 0, "lora_rank": 0}
    shaping = {**{k: v for k, v in asdict(spec).items() if k not in ("name", "steps")
                  and not (k in later and v == later[k])},
               "steps": spec.steps or p.finetune_steps, "seed": p.seed if seed is None else seed,
               "phrases": p.finetune_phrases if phrases is None else (phrases or None),
               "batch_size": p.batch_size, "val_every": p.finetune_val_every,
               "base_sha256": sha256_file(base_ckpt), "target_lang": p.target_lang,
               "result_format": RESULT_FORMAT}
    if save_every:  # absent otherwise, so the keys of runs without it stay as they were
        shaping["save_every"] = save_every
    key = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]
    return (folder(p) / "runs" / f"{spec.name}-{key}",
            {**shaping, "key": key, "base_checkpoint": str(base_ckpt)})


def finetune(p: Profile, spec: Recipe, progress: bool = False, *, phrases: int | None = None,
             seed: int | None = None, save_every: int | None = None) -> dict[str, Any]:
    """Extend the base model to the target language with ``spec`` and train it (cached).

    Steps: grow the text tables from the base tokenizer's size to the extended one with
    ``spec.init`` (rows of the base keep their ids; ``spec.pretrained=False`` starts every
    weight afresh instead), train on the target training split, and report losses and row drift.
    The grown model before training is kept as ``init.pt`` (the snapshot for drift).

    One cache, keyed by settings: the run lives in ``runs/<name>-<key>``, where ``key`` hashes
    everything that shapes its result (the recipe but its name, the base model, the data regime,
    seed, batch and steps). A finished run of the same key is returned under any name; a killed
    one resumes from its last checkpoint and ends bit-identical to an uninterrupted run.

    Args:
        p: the profile (base model, data, batch size, default length).
        spec: the recipe; ``spec.steps`` (default ``p.finetune_steps``) sets the length.
        progress: progress bars for data building and training.
        phrases: target-language training phrases (the data regime); None: the profile's
            ``finetune_phrases`` (low-resource), 0: every phrase of the training split.
        seed: the fine-tune's seed (init noise, batch order, dropout); None: the profile's.
            The base model is the profile's either way.
        save_every: checkpoint every N steps and keep them all (default: at every validation,
            the last three kept), so that a killed run loses at most that many steps and
            :func:`quality_curve` can evaluate each. It does not change the weights; it is part
            of the key, so a run asked for with its own interval has those checkpoints.

    Returns:
        ``key``, ``run_dir``, ``checkpoint``, ``init``, ``base_rows``, ``rows``, ``tokenizer``,
        ``train_manifest``,
        ``val`` (last validation), ``first_val``, ``learning_rate``, ``new_row_lr`` and
        ``warmup_steps`` (the recipe mapped onto this model and run,
        :meth:`amhelpers.recipes.Recipe.train_config`), ``phrases``, ``seed``,
        ``resumed_from_step`` (0 unless a killed run was resumed), ``drift`` (see
        :func:`amhelpers.tables.drift_from_init`), ``frozen_changed_rows``,
        ``frozen_relative_change``, ``steps``, ``wall_s``.
    """
    import shutil

    from . import checkpoint as ckpt
    from .logs import read_metrics
    from .model import load_checkpoint
    from .rundir import checkpoint_step
    from .tables import drift_from_init
    from .train import latest_checkpoint, train

    if spec.extension not in ("extended", "naive"):
        raise ValueError(f"Recipe.extension={spec.extension!r}: choose 'extended' or 'naive'")
    run_dir, shaping = run_folder(p, spec, phrases, seed, progress, save_every)
    key, steps, seed, limit = (shaping[k] for k in ("key", "steps", "seed", "phrases"))
    base_ckpt, base_sha, spec_dict = Path(shaping["base_checkpoint"]), shaping["base_sha256"], asdict(spec)
    for done in sorted(run_dir.parent.glob(f"*-{key}/result.json")):  # same settings, any name
        cached = json.loads(done.read_text())
        if cached.get("key") == key:
            return cached
    init_path, train_dir = run_dir / "init.pt", run_dir / "train"
    base_tok, ext_tok = base_tokenizer(p), extended_tokenizer(p, naive=spec.extension == "naive")
    sd, meta = ckpt.load_state_dict(base_ckpt)
    base_vocab = sd["text_embedding.weight"].shape[0] - 1
    new_vocab = len(tk.load_proto(ext_tok, "tokenizer").pieces)
    last = latest_checkpoint(train_dir) if init_path.is_file() else None
    resume = last is not None
    if not resume:  # new, or killed before its first checkpoint: the folder is ours to redo
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        grown, record = ckpt.grow_text_tables(sd, base_vocab, new_vocab, spec.init, seed=seed,
                                              tokenizer=ext_tok, base_tokenizer=base_tok)
        ckpt.save_state_dict(init_path, grown, meta)
        if not spec.pretrained:  # the same architecture and rows, every weight drawn afresh
            import torch

            model, _ = load_checkpoint(init_path)
            torch.manual_seed(seed)
            grown = type(model)(model.config).state_dict()
            ckpt.save_state_dict(init_path, grown, meta)
            record = {**record, "pretrained": False}
        ckpt.write_extension_record(init_path, record)
    else:  # a killed run resumes: its init snapshot is on disk
        grown, _ = ckpt.load_state_dict(init_path)
    val_every = p.finetune_val_every
    cfg = spec.train_config(
        base_vocab, p.learning_rate, steps,
        train_manifest=str(manifest(p, p.target_lang, "train", ext_tok, progress, limit)),
        val_manifest=str(manifest(p, p.target_lang, "val", ext_tok, progress)),
        tokenizer=str(ext_tok), output_dir=str(train_dir), init_checkpoint=str(init_path),
        replay_manifest=(str(manifest(p, p.base_lang, "train", base_tok, progress))
                         if spec.replay_fraction else None),
        batch_size=p.batch_size, val_every=val_every, save_every=save_every or val_every,
        keep_last=steps // save_every + 1 if save_every else 3,
        seed=seed, progress=progress, device=EMBEDDED_DEVICE,
        resume="auto" if resume else None)
    out = train(cfg)
    trained, _ = ckpt.load_state_dict(out["checkpoint"])
    moved = drift_from_init(trained, grown, base_vocab)
    val = read_metrics(train_dir, split="val")
    frozen_changed = {name: int((trained[name][:base_vocab] != sd[name][:base_vocab]).any(-1).sum()
                                if trained[name].dim() > 1 else
                                (trained[name][:base_vocab] != sd[name][:base_vocab]).sum())
                      for name in ckpt.TEXT_KEYS}
    rel = {name: float(((trained[name][:base_vocab] - sd[name][:base_vocab]).norm()
                        / sd[name][:base_vocab].norm()).item()) for name in ckpt.TEXT_KEYS}
    result = {"key": key, "spec": spec_dict, "settings": shaping, "base_sha256": base_sha,
              "run_dir": str(run_dir), "checkpoint": out["checkpoint"],
              "init": str(init_path), "base_rows": base_vocab, "rows": new_vocab + 1,
              "tokenizer": str(ext_tok), "train_manifest": cfg.train_manifest,
              "learning_rate": cfg.learning_rate,
              "new_row_lr": cfg.new_row_lr, "warmup_steps": cfg.warmup_steps,
              "phrases": limit, "seed": seed,
              "resumed_from_step": checkpoint_step(last) if last is not None else 0,
              "first_val": val[0] if val else None, "val": val[-1] if val else None,
              "drift": moved, "frozen_changed_rows": frozen_changed,
              "frozen_relative_change": rel, "steps": out["step"], "wall_s": out["wall_s"]}
    write_text_atomic(run_dir / "result.json", json.dumps(result, default=str))
    return result


def generation(p: Profile, result: Mapping[str, Any], lang: str | None = None,
               per: bool = False) -> dict[str, Any]:
    """Evaluate a fine-tuned run on held-out phrases of ``lang`` (default: the target).

    English text keeps its ids under the extended tokenizer (chapter 1), so base-language
    manifests built with the base tokenizer serve to measure retention.
    """
    lang = lang or p.target_lang
    own = Path(result.get("tokenizer") or extended_tokenizer(p))  # the tokenizer the run trained on
    tok = own if lang == p.target_lang else base_tokenizer(p)
    return generation_metrics(Path(result["checkpoint"]), p, lang, tokenizer=tok, per=per)

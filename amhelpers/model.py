"""MiniVoice: a miniature IndexTTS2 GPT ("UnifiedVoice") that trains on a laptop CPU.

Why this module is long: the config and its checks, the blocks with their KV cache, the losses,
generation and the load-time shape checks describe one model and read together (about 650
lines); checkpoint files are read and written by :mod:`amhelpers.ckptio`.

The layout and parameter names follow UnifiedVoice (``indextts/gpt/model_v2.py``) where the
course needs them to match, so the same diagnostics and fixes apply to both models:

- ``text_embedding`` / ``text_head`` have ``number_text_tokens + 1`` rows (the "+1" row is
  never produced by the tokenizer, as in IndexTTS2);
- ``mel_embedding`` / ``mel_head`` have ``number_mel_codes`` rows: a K-code codebook plus
  ``start_mel_token = K`` and ``stop_mel_token = K + 1``;
- ``text_pos_embedding.emb`` / ``mel_pos_embedding.emb`` are learned position tables;
- initialisation as in UnifiedVoice's constructor: embeddings and position tables N(0, 0.02),
  heads keep the default ``nn.Linear`` init (uniform within ±1/sqrt(model_dim)).

One sequence is ``[start_text text stop_text][start_mel codes stop_mel]`` under causal
attention. ``text_loss`` is the cross-entropy of predicting each next text token (up to and
including ``stop_text``) with ``text_head``; ``mel_loss`` that of predicting each next code
(up to and including ``stop_mel``) with ``mel_head``. There is no speaker conditioning: the
course studies the text tables, not voice cloning.

The transformer blocks are plain pre-LayerNorm blocks with ``nn.Linear`` layers (weights are
``(out, in)``, unlike GPT-2's transposed ``Conv1D``), written here so that the KV cache used by
:meth:`MiniVoice.generate` stays a pair of tensors per layer.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amhelpers.ckptio import read_checkpoint, save_minivoice

IGNORE_INDEX = -100

KVCache = list[tuple[Tensor, Tensor]]


class CheckpointMismatchError(RuntimeError):
    """A state dict or checkpoint does not fit the model it is loaded into."""


@dataclass
class MiniVoiceConfig:
    """Sizes and special tokens of a :class:`MiniVoice` (JSON-serialisable).

    ``start_mel_token`` / ``stop_mel_token`` default to ``number_mel_codes - 2`` / ``- 1``,
    i.e. ``K`` and ``K + 1`` for a K-code codebook.
    """

    number_text_tokens: int
    number_mel_codes: int
    start_text_token: int = 0
    stop_text_token: int = 1
    start_mel_token: int | None = None
    stop_mel_token: int | None = None
    model_dim: int = 256
    layers: int = 4
    heads: int = 4
    ff_mult: int = 4
    max_text_tokens: int = 200
    max_mel_tokens: int = 400
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.start_mel_token is None:
            self.start_mel_token = self.number_mel_codes - 2
        if self.stop_mel_token is None:
            self.stop_mel_token = self.number_mel_codes - 1
        problems = []
        for name in ("model_dim", "layers", "heads", "ff_mult", "max_text_tokens",
                     "max_mel_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                problems.append(f"{name}={value} must be a positive integer")
        if problems:  # the checks below divide by heads and compare sizes
            raise ValueError("MiniVoiceConfig: " + "; ".join(problems))
        if self.number_text_tokens < 2:
            problems.append(f"number_text_tokens={self.number_text_tokens} must be >= 2")
        if self.number_mel_codes < 3:
            problems.append(f"number_mel_codes={self.number_mel_codes} must be >= 3 (K + 2)")
        for name in ("start_text_token", "stop_text_token"):
            if not 0 <= getattr(self, name) < self.number_text_tokens:
                problems.append(f"{name}={getattr(self, name)} is outside [0, number_text_tokens)")
        for name in ("start_mel_token", "stop_mel_token"):
            if not 0 <= getattr(self, name) < self.number_mel_codes:
                problems.append(f"{name}={getattr(self, name)} is outside [0, number_mel_codes)")
        if self.model_dim % self.heads:
            problems.append(f"model_dim={self.model_dim} is not divisible by heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:  # also false for NaN
            problems.append(f"dropout={self.dropout} must be in [0, 1)")
        if problems:
            raise ValueError("MiniVoiceConfig: " + "; ".join(problems))

    @property
    def codebook_size(self) -> int:
        """K, the number of real codes (``number_mel_codes - 2``)."""
        return self.number_mel_codes - 2

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MiniVoiceConfig:
        """Build a config from a dict, rejecting unknown keys with a clear error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"MiniVoiceConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))


class LearnedPositionEmbeddings(nn.Module):
    """A learned position table, ``emb`` as in UnifiedVoice, initialised N(0, 0.02)."""

    def __init__(self, seq_len: int, model_dim: int, init: float = 0.02) -> None:
        super().__init__()
        self.emb = nn.Embedding(seq_len, model_dim)
        nn.init.normal_(self.emb.weight, mean=0.0, std=init)

    def forward(self, start: int, length: int) -> Tensor:
        """Return rows ``start .. start + length - 1`` as a ``(length, model_dim)`` tensor."""
        if start + length > self.emb.num_embeddings:
            raise ValueError(
                f"position {start + length - 1} is past the table's {self.emb.num_embeddings} rows"
            )
        return self.emb.weight[start:start + length]


class Attention(nn.Module):
    """Multi-head self-attention with an optional KV cache."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None,
                mask: Tensor | None = None, probe: list[Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attend ``x`` (B, L, D) causally, after the cached positions if any.

        Args:
            x: the new positions (with a cache: one position, which sees everything cached).
            past: cached (keys, values), each (B, H, S, D / H), or None.
            mask: boolean (B, 1, L, S + L), True = may attend; replaces the causal rule
                (used by :meth:`MiniVoice.generate_batch` for left padding).
            probe: when given (training, no cache, no mask), the attention probabilities
                (B, L, L) of the first head are appended to it (for the guided-attention loss).

        Returns:
            The output (B, L, D) and the updated (keys, values).
        """
        b, length, dim = x.shape
        q, k, v = self.c_attn(x).view(b, length, 3, self.heads, dim // self.heads).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if mask is None and past is not None and length > 1:
            raise ValueError("with a KV cache, feed one position at a time")
        if probe is not None:
            if past is not None or mask is not None:
                raise ValueError("attention probes need a full causal pass (no cache, no mask)")
            scores = q[:, 0] @ k[:, 0].transpose(1, 2) / math.sqrt(q.shape[-1])
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril_()
            probe.append(scores.masked_fill(~causal, -math.inf).softmax(-1))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and past is None and length > 1,
            dropout_p=self.dropout if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(b, length, dim)
        return self.c_proj(out), (k, v)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, dim: int, heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(dim, ff_mult * dim))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(ff_mult * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None,
                mask: Tensor | None = None, probe: list[Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Run the block; see :meth:`Attention.forward` for ``past``, ``mask`` and ``probe``."""
        attn, present = self.attn(self.ln_1(x), past, mask, probe)
        x = x + self.drop(attn)
        x = x + self.drop(self.mlp(self.ln_2(x)))
        return x, present


class MiniVoice(nn.Module):
    """Decoder-only text-to-code transformer with UnifiedVoice's names and layout.

    Args:
        config: sizes and special tokens.
    """

    def __init__(self, config: MiniVoiceConfig) -> None:
        super().__init__()
        self.config = config
        d = config.model_dim
        self.text_embedding = nn.Embedding(config.number_text_tokens + 1, d)
        self.mel_embedding = nn.Embedding(config.number_mel_codes, d)
        self.text_pos_embedding = LearnedPositionEmbeddings(config.max_text_tokens + 2, d)
        self.mel_pos_embedding = LearnedPositionEmbeddings(config.max_mel_tokens + 2, d)
        self.gpt = nn.ModuleList(
            Block(d, config.heads, config.ff_mult, config.dropout) for _ in range(config.layers)
        )
        self.final_norm = nn.LayerNorm(d)
        self.text_head = nn.Linear(d, config.number_text_tokens + 1)
        self.mel_head = nn.Linear(d, config.number_mel_codes)
        # UnifiedVoice's constructor: embeddings N(0, 0.02); heads keep nn.Linear's default.
        nn.init.normal_(self.text_embedding.weight, mean=0.0, std=0.02)
        nn.init.normal_(self.mel_embedding.weight, mean=0.0, std=0.02)

    # ----------------------------------------------------------------------------- training
    def forward(self, text_ids: Tensor, text_lengths: Tensor, codes: Tensor, code_lengths: Tensor,
                return_logits: bool = False, guide_sigma: float | None = None
                ) -> dict[str, Tensor]:
        """Teacher-forced losses for a padded batch.

        Args:
            text_ids: (B, N) text token ids, padded; without start/stop (the model adds them).
            text_lengths: (B,) number of real text tokens per row.
            codes: (B, M) code ids in ``[0, K)``, padded; without start/stop.
            code_lengths: (B,) number of real codes per row.
            return_logits: also return ``text_logits`` (B, N + 2, T + 1) and ``mel_logits``
                (B, M + 1, number_mel_codes) with their ``text_targets`` / ``mel_targets``
                (``-100`` where ignored).
            guide_sigma: also return ``guide_loss``, the guided-attention loss
                (:func:`guided_attention_loss`) of the first head of every layer but the
                first, with this width.

        Returns:
            ``text_loss`` and ``mel_loss`` (mean cross-entropy per predicted token), and
            ``text_tokens`` / ``mel_tokens`` (how many tokens each mean is over).
        """
        cfg = self.config
        self._check_batch(text_ids, text_lengths, codes, code_lengths)
        text_in, text_tgt = _with_start_stop(text_ids, text_lengths, cfg.start_text_token,
                                             cfg.stop_text_token)
        mel_in, mel_tgt = _with_start_stop(codes, code_lengths, cfg.start_mel_token,
                                           cfg.stop_mel_token)
        # stop_text would predict start_mel, which is given: it has no text target. stop_mel
        # is a target, never an input.
        mel_in, mel_tgt = mel_in[:, :-1], mel_tgt[:, :-1]
        n_text, n_mel = text_in.shape[1], mel_in.shape[1]

        x = torch.cat([
            self.text_embedding(text_in) + self.text_pos_embedding(0, n_text),
            self.mel_embedding(mel_in) + self.mel_pos_embedding(0, n_mel),
        ], dim=1)
        # Pack each row as [text block][mel block][padding]: padding only at the end, so plain
        # causal attention gives every row exactly what it would see alone (and what
        # generate() sees), with no attention mask.
        text_len = text_lengths + 2
        length = int((text_len + code_lengths + 1).max())
        pos = torch.arange(length, device=text_ids.device)[None]
        packed = torch.where(pos < text_len[:, None], pos,
                             n_text + (pos - text_len[:, None]).clamp(max=n_mel - 1))
        probe: list[Tensor] | None = [] if guide_sigma is not None else None
        h, _ = self._transform(_take(x, packed), None, probe=probe)
        mel_pos = (text_len[:, None] + torch.arange(n_mel, device=h.device)[None]).clamp(
            max=length - 1)
        text_logits = self.text_head(h[:, :n_text])
        mel_logits = self.mel_head(_take(h, mel_pos))
        out = {
            "text_loss": F.cross_entropy(text_logits.transpose(1, 2), text_tgt,
                                         ignore_index=IGNORE_INDEX),
            "mel_loss": F.cross_entropy(mel_logits.transpose(1, 2), mel_tgt,
                                        ignore_index=IGNORE_INDEX),
            "text_tokens": (text_tgt != IGNORE_INDEX).sum(),
            "mel_tokens": (mel_tgt != IGNORE_INDEX).sum(),
        }
        if probe is not None:
            out["guide_loss"] = (torch.stack([
                guided_attention_loss(a, text_len, code_lengths + 1, guide_sigma) for a in probe
            ]).mean() if probe else h.new_zeros(()))
        if return_logits:
            out.update(text_logits=text_logits, mel_logits=mel_logits,
                       text_targets=text_tgt, mel_targets=mel_tgt)
        return out

    def _check_batch(self, text_ids: Tensor, text_lengths: Tensor, codes: Tensor,
                     code_lengths: Tensor) -> None:
        cfg = self.config
        if text_ids.dim() != 2 or codes.dim() != 2 or len(text_ids) != len(codes):
            raise ValueError(f"expected (B, N) text_ids and (B, M) codes, got "
                             f"{tuple(text_ids.shape)} and {tuple(codes.shape)}")
        if int(text_lengths.max()) > text_ids.shape[1] or int(code_lengths.max()) > codes.shape[1]:
            raise ValueError("a length is larger than its padded tensor")
        if int(text_lengths.max()) > cfg.max_text_tokens:
            raise ValueError(f"{int(text_lengths.max())} text tokens exceed "
                             f"max_text_tokens={cfg.max_text_tokens}")
        if int(code_lengths.max()) > cfg.max_mel_tokens:
            raise ValueError(f"{int(code_lengths.max())} codes exceed "
                             f"max_mel_tokens={cfg.max_mel_tokens}")
        real_text = text_ids[torch.arange(text_ids.shape[1], device=text_ids.device)
                             < text_lengths[:, None]]
        if real_text.numel() and not 0 <= int(real_text.min()) <= int(real_text.max()) \
                < cfg.number_text_tokens:
            raise ValueError(f"text ids must be in [0, {cfg.number_text_tokens}) "
                             f"(number_text_tokens), got {int(real_text.min())}.."
                             f"{int(real_text.max())}")
        real_codes = codes[torch.arange(codes.shape[1], device=codes.device) < code_lengths[:, None]]
        if real_codes.numel() and not 0 <= int(real_codes.min()) <= int(real_codes.max()) \
                < cfg.codebook_size:
            raise ValueError(f"codes must be in [0, {cfg.codebook_size}) (the codebook), got "
                             f"{int(real_codes.min())}..{int(real_codes.max())}")

    def _transform(self, x: Tensor, cache: KVCache | None, mask: Tensor | None = None,
                   probe: list[Tensor] | None = None) -> tuple[Tensor, KVCache]:
        """Run all blocks and the final norm; returns hidden states and the new cache.

        With ``probe``, the first head's attention of every layer but the first is appended.
        """
        present: KVCache = []
        for i, block in enumerate(self.gpt):
            x, kv = block(x, None if cache is None else cache[i], mask,
                          probe if i > 0 else None)
            present.append(kv)
        return self.final_norm(x), present

    @torch.no_grad()
    def text_attention(self, text_ids: Sequence[int] | Tensor, codes: Sequence[int] | Tensor
                       ) -> Tensor:
        """Where the probed heads read the text while the codes are teacher-forced.

        The probed heads are those the guided-attention loss trains: the first head of every
        layer but the first. A head that reads the text in order shows a diagonal.

        Args:
            text_ids: one utterance's text ids, without start/stop.
            codes: its codes, without start/stop.

        Returns:
            (layers - 1, len(codes) + 1, len(text_ids) + 2): for each probed head, each mel
            query (start_mel, then every code) and each text position (start, text, stop), the
            attention renormalised over the text block.
        """
        if self.config.layers < 2:
            raise ValueError("text_attention probes the layers after the first; this model has "
                             f"layers={self.config.layers}")
        code_ids = torch.as_tensor(codes, dtype=torch.long).reshape(-1)
        if len(code_ids) and not 0 <= int(code_ids.min()) <= int(code_ids.max()) \
                < self.config.codebook_size:
            raise ValueError(f"codes must be in [0, {self.config.codebook_size})")
        x = torch.cat([self._prompt(text_ids),
                       self.mel_embedding(code_ids) + self.mel_pos_embedding(1, len(code_ids))])
        was_training = self.training
        self.eval()
        try:
            probe: list[Tensor] = []
            self._transform(x[None], None, probe=probe)
        finally:
            self.train(was_training)
        n_text = len(x) - len(code_ids) - 1
        maps = torch.stack([a[0, n_text:, :n_text] for a in probe])
        return maps / maps.sum(-1, keepdim=True).clamp_min(1e-9)

    # ---------------------------------------------------------------------------- inference
    @torch.inference_mode()
    def generate(self, text_ids: Sequence[int] | Tensor, max_len: int | None = None,
                 greedy: bool = True, top_k: int = 0, temperature: float = 1.0,
                 seed: int | None = None, min_len: int = 0, use_cache: bool = True) -> list[int]:
        """Generate codes for one utterance.

        Args:
            text_ids: text token ids without start/stop.
            max_len: most codes to generate (capped at ``max_mel_tokens``, the default). An
                output of exactly this length hit the cap instead of the stop token.
            greedy: take the most likely code; otherwise sample.
            top_k: when sampling, keep only the k most likely tokens (0 = all).
            temperature: when sampling, divide logits by this.
            seed: seed of a private generator for sampling (the global RNG is then untouched);
                None samples from the global torch RNG.
            min_len: forbid the stop token before this many codes.
            use_cache: reuse keys/values of earlier positions (a KV cache); ``False`` reruns
                the whole sequence at every step (slow; for tests and benchmarks).

        Returns:
            The codes, without start/stop tokens.
        """
        cfg = self.config
        dev = self.text_embedding.weight.device
        inputs = self._prompt(text_ids)[None]
        cap = cfg.max_mel_tokens if max_len is None else min(int(max_len), cfg.max_mel_tokens)
        generator = torch.Generator(dev).manual_seed(seed) if seed is not None else None
        was_training = self.training
        self.eval()
        try:
            codes: list[int] = []
            cache: KVCache | None = None
            while len(codes) < cap:
                if use_cache:
                    h, cache = self._transform(inputs, cache)
                else:
                    h, _ = self._transform(inputs, None)
                logits = self._next_logits(h[:, -1], len(codes) < min_len)
                code = int(_pick(logits, greedy, top_k, temperature, generator)[0])
                if code == cfg.stop_mel_token:
                    break
                codes.append(code)
                if len(codes) == cap:
                    break
                step = self._mel_input(torch.tensor([code], device=dev), len(codes))
                inputs = step if use_cache else torch.cat([inputs, step], dim=1)
            return codes
        finally:
            self.train(was_training)

    @torch.inference_mode()
    def generate_batch(self, texts: Sequence[Sequence[int] | Tensor], max_len: int | None = None,
                       greedy: bool = True, top_k: int = 0, temperature: float = 1.0,
                       seed: int | None = None, min_len: int = 0) -> list[list[int]]:
        """Generate codes for several utterances at once (KV cache, left-padded prompts).

        Greedy results equal :meth:`generate` row by row (up to float rounding ties);
        sampled ones draw from one generator for the batch, so they differ from
        :meth:`generate`'s. Arguments are those of :meth:`generate`.

        Returns:
            One list of codes per text, in order.
        """
        cfg = self.config
        prompts = [self._prompt(text) for text in texts]
        if not prompts:
            return []
        cap = cfg.max_mel_tokens if max_len is None else min(int(max_len), cfg.max_mel_tokens)
        dev = self.text_embedding.weight.device
        generator = torch.Generator(dev).manual_seed(seed) if seed is not None else None
        b, width = len(prompts), max(len(p) for p in prompts)
        inputs = torch.zeros(b, width, cfg.model_dim, device=dev)
        valid = torch.zeros(b, width, dtype=torch.bool, device=dev)
        for i, prompt in enumerate(prompts):
            inputs[i, width - len(prompt):] = prompt
            valid[i, width - len(prompt):] = True
        # Causal over real keys; a padding query sees only itself (so no row is all -inf).
        mask = torch.ones(width, width, dtype=torch.bool, device=dev).tril_() & valid[:, None, :]
        mask = (mask | torch.eye(width, dtype=torch.bool, device=dev))[:, None]
        was_training = self.training
        self.eval()
        try:
            codes: list[list[int]] = [[] for _ in prompts]
            done = torch.zeros(b, dtype=torch.bool, device=dev)
            h, cache = self._transform(inputs, None, mask)
            for step in range(cap):
                logits = self._next_logits(h[:, -1], step < min_len)
                picked = _pick(logits, greedy, top_k, temperature, generator)
                done |= picked == cfg.stop_mel_token
                for i in torch.nonzero(~done).flatten().tolist():
                    codes[i].append(int(picked[i]))
                if bool(done.all()) or step + 1 == cap:
                    break
                valid = torch.cat([valid, torch.ones(b, 1, dtype=torch.bool, device=dev)], dim=1)
                h, cache = self._transform(self._mel_input(picked, step + 1), cache,
                                           valid[:, None, None, :])
            return codes
        finally:
            self.train(was_training)

    def _prompt(self, text_ids: Sequence[int] | Tensor) -> Tensor:
        """Embeddings (P, D) of ``[start_text text stop_text start_mel]``, ids checked."""
        cfg = self.config
        dev = self.text_embedding.weight.device
        text = torch.as_tensor(text_ids, dtype=torch.long).reshape(-1).to(dev)
        if len(text) > cfg.max_text_tokens:
            raise ValueError(f"{len(text)} text tokens exceed max_text_tokens={cfg.max_text_tokens}")
        if len(text) and not 0 <= int(text.min()) <= int(text.max()) < cfg.number_text_tokens:
            raise ValueError(f"text ids must be in [0, {cfg.number_text_tokens})")
        text_in = torch.cat([torch.tensor([cfg.start_text_token], device=dev), text,
                             torch.tensor([cfg.stop_text_token], device=dev)])
        prefix = self.text_embedding(text_in) + self.text_pos_embedding(0, len(text_in))
        return torch.cat([prefix, self._mel_input(torch.tensor([cfg.start_mel_token], device=dev),
                                                  0)[0]])

    def _mel_input(self, tokens: Tensor, position: int) -> Tensor:
        """Embeddings (B, 1, D) of one mel token per row, all at one mel position."""
        return (self.mel_embedding(tokens) + self.mel_pos_embedding(position, 1))[:, None]

    def _next_logits(self, hidden: Tensor, forbid_stop: bool) -> Tensor:
        """Mel logits (B, V) for the next code; start_mel (and stop, if asked) excluded."""
        logits = self.mel_head(hidden).float()
        logits[:, self.config.start_mel_token] = -math.inf
        if forbid_stop:
            logits[:, self.config.stop_mel_token] = -math.inf
        return logits

    # ------------------------------------------------------------------------- state dicts
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False):
        """Like :meth:`nn.Module.load_state_dict`, with errors that name what does not fit.

        Raises:
            CheckpointMismatchError: a tensor's shape differs (names the tensor and both
                shapes), or, with ``strict``, keys are missing or unexpected.
        """
        check_state_dict(self, state_dict, strict=strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _with_start_stop(ids: Tensor, lengths: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """Return inputs ``[start ids stop pad...]`` and targets ``[ids stop -100...]``, (B, N + 2).

    Position p predicts input p + 1, so the input ``stop`` (position length + 1) gets no
    target. Padding in the inputs is ``stop`` (any valid id; it ends up after every real
    token of its row, where causal attention keeps it out of sight).
    """
    b, n = ids.shape
    positions = torch.arange(n + 2, device=ids.device)
    stop_at = (lengths + 1)[:, None]
    inputs = torch.cat([torch.full((b, 1), start, device=ids.device), ids,
                        torch.full((b, 1), stop, device=ids.device)], dim=1)
    inputs = torch.where(positions < stop_at, inputs, torch.full_like(inputs, stop))
    targets = torch.cat([ids, torch.full((b, 2), stop, device=ids.device)], dim=1)
    targets = torch.where(positions < stop_at - 1, targets, torch.full_like(targets, stop))
    targets = targets.masked_fill(positions >= stop_at, IGNORE_INDEX)
    return inputs, targets


def guided_attention_loss(probs: Tensor, text_len: Tensor, mel_len: Tensor, sigma: float
                          ) -> Tensor:
    """Guided-attention loss (Tachibana et al. 2018, DC-TTS) for packed decoder-only rows.

    Each row is packed as ``[text block][mel block]`` (see :meth:`MiniVoice.forward`). For every
    mel query ``n`` the attention over the row's text block is renormalised, and its weight on
    text position ``t`` is penalised by ``1 - exp(-(n/N - t/T)^2 / (2 sigma^2))``: attention
    far from the diagonal costs, attention near it is free. This teaches a head to read the
    text in order, which a small model on little data learns slowly on its own.

    Args:
        probs: (B, L, L) attention probabilities of one head.
        text_len: (B,) length of each row's text block (text tokens + start + stop).
        mel_len: (B,) number of mel queries (codes + start_mel).
        sigma: width of the allowed band, as a fraction of the utterance (DC-TTS: 0.2).

    Returns:
        The mean penalty per mel query, in [0, 1).
    """
    n_text, n_mel = int(text_len.max()), int(mel_len.max())
    dev = probs.device
    queries = (text_len[:, None] + torch.arange(n_mel, device=dev)[None]).clamp(
        max=probs.shape[1] - 1)
    attn = torch.gather(probs[:, :, :n_text], 1, queries[:, :, None].expand(-1, -1, n_text))
    key_ok = torch.arange(n_text, device=dev)[None] < text_len[:, None]                   # (B, T)
    query_ok = torch.arange(n_mel, device=dev)[None] < mel_len[:, None]                   # (B, M)
    attn = attn * key_ok[:, None]
    attn = attn / attn.sum(-1, keepdim=True).clamp_min(1e-9)
    n = (torch.arange(n_mel, device=dev)[None] + 0.5) / mel_len[:, None]                  # (B, M)
    t = (torch.arange(n_text, device=dev)[None] + 0.5) / text_len[:, None]                # (B, T)
    penalty = 1 - torch.exp(-(n[:, :, None] - t[:, None]) ** 2 / (2 * sigma ** 2))
    per_query = (attn * penalty).sum(-1)
    return (per_query * query_ok).sum() / query_ok.sum()


def _take(x: Tensor, index: Tensor) -> Tensor:
    """Gather positions: ``out[b, i] = x[b, index[b, i]]`` for x (B, L, D), index (B, I)."""
    return torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[2]))


def _pick(logits: Tensor, greedy: bool, top_k: int, temperature: float,
          generator: torch.Generator | None) -> Tensor:
    """Choose one token per row of (B, V) logits: argmax, or sample with top-k and temperature."""
    if greedy:
        return torch.argmax(logits, dim=-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# ------------------------------------------------------------------------------ checkpoints
def check_state_dict(model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True) -> None:
    """Raise a clear error when ``state_dict`` does not fit ``model``.

    Args:
        model: the receiving module.
        state_dict: tensors by name.
        strict: also report missing and unexpected keys.

    Raises:
        CheckpointMismatchError: naming each mismatched tensor with both shapes.
    """
    own = model.state_dict()
    problems = [
        f"{name}: checkpoint has shape {tuple(value.shape)}, model has {tuple(own[name].shape)}"
        for name, value in state_dict.items()
        if name in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[name].shape)
    ]
    if strict:
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if missing:
            problems.append(f"missing from the checkpoint: {', '.join(missing[:8])}"
                            + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
        if unexpected:
            problems.append(f"not in the model: {', '.join(unexpected[:8])}"
                            + (f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else ""))
    if problems:
        raise CheckpointMismatchError(
            "the state dict does not fit this model (was it saved with another config?):\n  "
            + "\n  ".join(problems)
        )


def save_checkpoint(path: str | os.PathLike, model: MiniVoice, *,
                    train_state: dict[str, Any] | None = None,
                    weights: Mapping[str, Tensor] | None = None, **meta: Any) -> Path:
    """Save a model with its config, atomically (the file is complete or untouched).

    The file is a dict ``{"format", "config", "model", "meta"[, "train_state"]}``; weights sit
    under ``"model"`` as in IndexTTS2's ``gpt.pth`` (written by :func:`amhelpers.ckptio.save_minivoice`;
    read back by :func:`amhelpers.ckptio.read_checkpoint`).

    Args:
        path: the checkpoint file (``*.pt``).
        model: the model to save.
        train_state: optimizer, scheduler, RNG and data state for resuming (trainer only).
        weights: the weights to store instead of ``model.state_dict()`` (the trainer's LoRA
            runs give the merged ones).
        **meta: JSON-like metadata (step, tokenizer path and sha256, metrics, ...).

    Returns:
        The path written.
    """
    if weights is None:
        weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return save_minivoice(path, model.config.to_dict(), weights, meta, train_state)


def load_checkpoint(path: str | os.PathLike) -> tuple[MiniVoice, dict[str, Any]]:
    """Load a model saved by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.

    Returns:
        The model (in eval mode, on CPU) and its metadata dict.
    """
    payload = read_checkpoint(path)
    model = MiniVoice(MiniVoiceConfig.from_dict(payload["config"]))
    try:
        model.load_state_dict(payload["model"])
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"{path}: {err}") from None
    model.eval()
    return model, dict(payload.get("meta", {}))


def count_parameters(model: nn.Module) -> int:
    """Return the number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())

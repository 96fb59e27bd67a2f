"""The SID vocabulary: special tokens plus one block of token ids per SID level.

Global token id of level-local token ``t`` at level ``l`` is ``offsets[l] + t`` with
``offsets[l] = N_SPECIAL + sum(sizes[:l])``; the vocabulary has ``N_SPECIAL + sum(sizes)`` ids.
Special tokens: ``PAD = 0``, ``BOS = 1`` (decoder start), ``EOS = 2`` (end of the encoder input),
``SEP = 3`` (reserved separator).

A history of items is encoded right-aligned (left-padded) over its last ``max_items`` items,
flattened to ``max_items * L`` tokens; ``levels`` gives each token's SID level (-1 for padding)
and ``slots`` the history slot (0 = oldest kept) it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from components.tokenizer.codebook import Codebook

PAD, BOS, EOS, SEP = 0, 1, 2, 3
N_SPECIAL = 4
ITEM_PAD = -1  # padding in item-index matrices (same as components.data.dataset.PAD)


@dataclass
class EncodedHistory:
    tokens: torch.Tensor  # int64 [B, S], PAD-padded on the left
    mask: torch.Tensor  # bool [B, S]
    levels: torch.Tensor  # int64 [B, S], SID level of each token, -1 for padding / specials
    slots: torch.Tensor  # int64 [B, S], history slot of each token, -1 for padding / specials
    items: torch.Tensor  # int64 [B, N], right-aligned item indices, -1 = padding

    def to(self, device) -> "EncodedHistory":
        return EncodedHistory(*(getattr(self, f).to(device) for f in ("tokens", "mask", "levels", "slots", "items")))


class SIDVocab:
    """Token ids for a codebook; encodes histories and targets, maps SIDs back to items."""

    def __init__(self, sids: np.ndarray, sizes: list[int]):
        self.sids = np.asarray(sids, dtype=np.int64)
        self.sizes = [int(s) for s in sizes]
        self.n_levels = len(self.sizes)
        self.offsets = [N_SPECIAL + sum(self.sizes[:l]) for l in range(self.n_levels)]
        self.size = N_SPECIAL + sum(self.sizes)
        self.n_items = int(self.sids.shape[0])
        self.item_tokens = torch.from_numpy(self.sids + np.asarray(self.offsets, dtype=np.int64)[None, :])  # [n_items, L]
        lv = np.full(self.size, -1, dtype=np.int64)
        for l, (o, s) in enumerate(zip(self.offsets, self.sizes)):
            lv[o : o + s] = l
        self.token_level = torch.from_numpy(lv)

    @classmethod
    def from_codebook(cls, cb: Codebook) -> "SIDVocab":
        return cls(cb.sids, cb.sizes)

    def level_range(self, level: int) -> tuple[int, int]:
        return self.offsets[level], self.offsets[level] + self.sizes[level]

    def token_names(self) -> list[str]:
        """Readable names (``<pad>``, ``<a_12>`` ...), e.g. for an LM tokenizer."""
        names = ["<pad>", "<bos>", "<eos>", "<sep>"]
        for l, s in enumerate(self.sizes):
            names += [f"<{chr(ord('a') + l)}_{t}>" for t in range(s)]
        return names

    # ---- encoding -------------------------------------------------------------------------
    def right_align(self, history: np.ndarray | list[list[int]], max_items: int) -> np.ndarray:
        """Item matrix (left-aligned, -1 padded, or a list of lists) → last ``max_items`` items, right-aligned."""
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if isinstance(history, np.ndarray):
            h = np.asarray(history, dtype=np.int64)
            if h.ndim != 2:
                raise ValueError(f"history matrix must be 2-D, got shape {h.shape}")
        else:
            rows = [list(r)[-max_items:] for r in history]
            width = max([len(r) for r in rows] + [1])
            h = np.full((len(rows), width), ITEM_PAD, dtype=np.int64)
            for i, r in enumerate(rows):
                h[i, : len(r)] = r
        valid = h != ITEM_PAD
        lengths = valid.sum(axis=1)
        if (valid & ~(np.arange(h.shape[1])[None, :] < lengths[:, None])).any():
            raise ValueError("history rows must be left-aligned (no padding between items)")
        if valid.any() and (h[valid].min() < 0 or h[valid].max() >= self.n_items):
            raise ValueError(f"history item index outside [0, {self.n_items})")
        width = h.shape[1]
        shift = width - lengths
        idx = np.arange(width)[None, :] - shift[:, None]
        out = np.where(idx >= 0, np.take_along_axis(h, idx.clip(0), axis=1), ITEM_PAD)
        if width >= max_items:
            return out[:, width - max_items :]
        return np.concatenate([np.full((h.shape[0], max_items - width), ITEM_PAD, dtype=np.int64), out], axis=1)

    def encode_history(self, history: np.ndarray | list[list[int]], max_items: int, append_eos: bool = False) -> EncodedHistory:
        """Flattened SID tokens of the last ``max_items`` items (right-aligned; optional trailing EOS)."""
        items = torch.from_numpy(self.right_align(history, max_items))
        B, N = items.shape
        L = self.n_levels
        valid = items >= 0
        toks = self.item_tokens[items.clamp(min=0)]  # [B, N, L]
        toks = torch.where(valid[..., None], toks, torch.full_like(toks, PAD)).reshape(B, N * L)
        levels = torch.where(valid[..., None], torch.arange(L).expand(B, N, L), torch.full((B, N, L), -1)).reshape(B, N * L)
        slots = torch.where(valid[..., None], torch.arange(N)[None, :, None].expand(B, N, L), torch.full((B, N, L), -1)).reshape(B, N * L)
        if append_eos:
            toks = torch.cat([toks, torch.full((B, 1), EOS)], dim=1)
            levels = torch.cat([levels, torch.full((B, 1), -1)], dim=1)
            slots = torch.cat([slots, torch.full((B, 1), -1)], dim=1)
        mask = toks != PAD
        return EncodedHistory(toks.long(), mask, levels.long(), slots.long(), items.long())

    def encode_targets(self, items: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Global SID tokens of target items, int64 [B, L]."""
        t = torch.as_tensor(np.asarray(items), dtype=torch.long)
        if t.numel() and (t.min() < 0 or t.max() >= self.n_items):
            raise ValueError(f"target item index outside [0, {self.n_items})")
        return self.item_tokens[t]

    def to_local(self, tokens: torch.Tensor) -> torch.Tensor:
        """Global SID tokens [.., L] → level-local tokens."""
        return tokens - torch.as_tensor(self.offsets, dtype=tokens.dtype, device=tokens.device)

    def decode(self, tokens: torch.Tensor | np.ndarray) -> np.ndarray:
        """Global SID tokens [n, L] → item indices [n] (-1 where the SID is not an item)."""
        t = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens, dtype=np.int64)
        local = t - np.asarray(self.offsets)[None, :]
        lookup = {tuple(r): i for i, r in enumerate(self.sids.tolist())}
        return np.asarray([lookup.get(tuple(r), -1) for r in local.tolist()], dtype=np.int64)

    def fingerprint(self) -> str:
        """Hash of the SIDs and sizes: a checkpoint refuses a codebook with another fingerprint."""
        import hashlib

        h = hashlib.sha256(np.ascontiguousarray(self.sids, dtype=np.int64).tobytes())
        h.update(repr(self.sizes).encode())
        return h.hexdigest()[:16]

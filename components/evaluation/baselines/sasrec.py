"""SASRec (Kang & McAuley, ICDM'18) on ``torch.nn.TransformerEncoder``: the classical sequential
baseline, and the user encoder the retrieval and FlexCode components reuse.

Model. A history ``x_1..x_T`` (oldest first, the last ``max_len`` items kept) is right-aligned in
a window of ``max_len`` positions; the input at position p is ``E[x_p] + P[p]`` (item and learned
position embeddings, ``E`` has a padding row), followed by dropout and ``n_layers`` pre-norm
Transformer encoder layers under a causal mask (position p attends to valid positions ≤ p; a
padding position attends only to itself, so no row is fully masked), and a final LayerNorm. The
user vector is the output at the last position, ``h_u`` (``encode``). Scores over ALL items share
the input embeddings: ``s_{u,i} = h_u · E[i]``.

Training. Users' training sequences are cut into chunks (:func:`training_chunks`) and every
position p predicts the next item x_{p+1} from x_1..x_p (causal): a full-softmax cross-entropy over
all items, ``L = (1/N) Σ_s w_{t_s} · (−log softmax(s_s)_{t_s})`` over the N transitions s, with
``w ≡ 1`` (plain) or popularity weights (RW, :func:`reweight.popularity_weights`). AdamW, early
stopping on valid NDCG@10 (all items ranked, history items not excluded), the best epoch's weights
kept. Seeded: parameter init, dropout and batch order come from ``seed``.

Artifact ``model/<name>``: ``model.safetensors`` (state dict) + ``config.json``
(``{"arch": "sasrec", "model": SASRecConfig, "train": TrainConfig, "history": [...]}``).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from components.evaluation.metrics import RankingError, ndcg_at_k
from components.registry import Artifact, ArtifactCorrupted, Registry

log = logging.getLogger(__name__)
PAD = -1


@dataclass
class SASRecConfig:
    n_items: int
    max_len: int = 20
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_mult: int = 4
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.n_items < 1 or self.max_len < 1:
            raise ValueError(f"SASRec needs n_items >= 1 and max_len >= 1, got {self.n_items}, {self.max_len}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3
    seed: int = 2024
    eval_batch_size: int = 1024
    max_minutes: float = 3.0
    num_threads: int = 1  # on a shared 2-core box one thread is ~10x faster than two


def right_align(histories: np.ndarray | Sequence[Sequence[int]], max_len: int, pad_value: int) -> np.ndarray:
    """Histories (``[n, H]`` left-aligned PAD=-1 matrix, or lists) → ``[n, max_len]`` right-aligned,
    padded with ``pad_value``, keeping the last ``max_len`` items of each."""
    if not isinstance(histories, np.ndarray):
        rows = [list(h) for h in histories]
        width = max((len(r) for r in rows), default=0)
        mat = np.full((len(rows), max(width, 1)), PAD, dtype=np.int64)
        for i, r in enumerate(rows):
            mat[i, : len(r)] = r
        histories = mat
    h = np.asarray(histories, dtype=np.int64)
    if h.ndim != 2:
        raise RankingError(f"histories must be a 2-D [n, H] matrix, got shape {h.shape}")
    n, H = h.shape
    lengths = (h != PAD).sum(axis=1)
    out = np.full((n, max_len), pad_value, dtype=np.int64)
    j = np.arange(H)[None, :]
    pos = j - lengths[:, None] + max_len  # target column of source column j
    keep = (j < lengths[:, None]) & (pos >= 0)
    rows = np.broadcast_to(np.arange(n)[:, None], (n, H))
    out[rows[keep], pos[keep]] = h[keep]
    return out


class SASRec(nn.Module):
    """Self-attentive sequential recommender; see the module docstring for the formulas."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.config = config
        c = config
        self.pad = c.n_items
        self.item_emb = nn.Embedding(c.n_items + 1, c.d_model, padding_idx=self.pad)
        self.pos_emb = nn.Embedding(c.max_len, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        layer = nn.TransformerEncoderLayer(
            c.d_model, c.n_heads, c.d_model * c.ffn_mult, c.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, c.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.d_model)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[self.pad].zero_()

    # ---- core --------------------------------------------------------------------------------
    def _mask(self, seq: torch.Tensor) -> torch.Tensor:
        """Bool attention mask [n·heads, L, L], True = blocked: causal ∧ valid key, self always allowed."""
        L = seq.shape[1]
        valid = seq != self.pad  # [n, L]
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()
        allowed = causal[None] & valid[:, None, :]
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=seq.device)[None]
        return (~allowed).repeat_interleave(self.config.n_heads, dim=0)

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq`` [n, max_len] right-aligned item ids (pad = n_items) → hidden states [n, max_len, d]."""
        pos = torch.arange(seq.shape[1], device=seq.device)
        x = self.item_emb(seq) * (self.config.d_model**0.5) + self.pos_emb(pos)[None]
        x = self.drop(x) * (seq != self.pad).unsqueeze(-1)
        return self.norm(self.encoder(x, mask=self._mask(seq)))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq`` [n, max_len] right-aligned → user vectors h_u = hidden state at the last position [n, d]."""
        return self.hidden(seq)[:, -1]

    def logits(self, user_vec: torch.Tensor) -> torch.Tensor:
        """s_{u,i} = h_u · E[i] over all catalog items, [n, n_items]."""
        return user_vec @ self.item_emb.weight[: self.config.n_items].T

    def to_input(self, histories: np.ndarray | Sequence[Sequence[int]]) -> torch.Tensor:
        if isinstance(histories, np.ndarray):
            real = histories[histories != PAD]
        else:
            real = np.fromiter((i for h in histories for i in h), dtype=np.int64)
        if real.size and (real.min() < 0 or real.max() >= self.config.n_items):
            raise RankingError(f"history item ids outside the catalog [0, {self.config.n_items}) (PAD = {PAD})")
        return torch.from_numpy(right_align(histories, self.config.max_len, self.pad))

    # ---- API reused by retrieval / FlexCode ----------------------------------------------------
    @torch.no_grad()
    def encode(self, histories: np.ndarray | Sequence[Sequence[int]], batch_size: int = 1024) -> np.ndarray:
        """User vectors h_u, float32 [n, d_model] (eval mode, fp32 even inside a caller's autocast: a
        GenPlugin RAR step under bf16 training asks for the same vectors the index was built with)."""
        was = self.training
        self.eval()
        seq = self.to_input(histories)
        with torch.autocast(self.item_emb.weight.device.type, enabled=False):
            out = [self(seq[i : i + batch_size]) for i in range(0, seq.shape[0], batch_size)]
        self.train(was)
        if not out:
            return np.zeros((0, self.config.d_model), dtype=np.float32)
        return torch.cat(out).float().numpy()

    @torch.no_grad()
    def item_embeddings(self) -> np.ndarray:
        """E[i] for the catalog items, float32 [n_items, d_model] (the score is h_u · E[i])."""
        return self.item_emb.weight[: self.config.n_items].detach().cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def score_topk(
        self,
        histories: np.ndarray,
        k: int,
        batch_size: int = 1024,
        adjust: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item ids and scores over ALL items (history items not excluded), ``[n, k]`` each.
        ``adjust(scores)`` may rewrite the scores first (e.g. RR re-ranking)."""
        if k > self.config.n_items:
            raise RankingError(f"k={k} is larger than the catalog ({self.config.n_items} items)")
        was = self.training
        self.eval()
        seq = self.to_input(histories)
        ids, vals = [], []
        for i in range(0, seq.shape[0], batch_size):
            s = self.logits(self(seq[i : i + batch_size]))
            if adjust is not None:
                s = adjust(s)
            v, ix = s.topk(k, dim=1)
            ids.append(ix)
            vals.append(v)
        self.train(was)
        if not ids:
            raise RankingError("empty test set: no histories to rank for")
        return torch.cat(ids).numpy().astype(np.int32), torch.cat(vals).numpy().astype(np.float32)

    # ---- artifact ----------------------------------------------------------------------------
    def save(self, registry: Registry, name: str, parents: list[str], params: dict[str, Any], extra: dict[str, Any] | None = None) -> Artifact:
        with registry.create("model", name, parents=parents, params=params) as w:
            w.write_safetensors("model.safetensors", {k: v.detach().cpu() for k, v in self.state_dict().items()})
            w.write_json("config.json", {"arch": "sasrec", "model": asdict(self.config), **(extra or {})})
            w.meta.update({"arch": "sasrec", "n_items": self.config.n_items, "d_model": self.config.d_model})
        return w.artifact

    @classmethod
    def from_artifact(cls, art: Artifact) -> "SASRec":
        if art.kind != "model":
            raise ArtifactCorrupted(f"{art.ref} is a {art.kind!r} artifact, not a model")
        cfg = art.load_json("config.json")
        if cfg.get("arch") != "sasrec":
            raise ArtifactCorrupted(f"{art.ref} holds a {cfg.get('arch')!r} model, not sasrec")
        model = cls(SASRecConfig(**cfg["model"]))
        try:
            model.load_state_dict(art.load_safetensors("model.safetensors"))
        except RuntimeError as e:
            raise ArtifactCorrupted(f"{art.ref}: weights do not fit the stored config: {e}") from None
        model.eval()
        return model


@dataclass
class TrainResult:
    model: SASRec
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_ndcg10: float = 0.0
    seconds: float = 0.0


def training_chunks(sequences: Sequence[Sequence[int]], max_len: int, pad_value: int) -> tuple[np.ndarray, np.ndarray]:
    """Users' training sequences → next-item training pairs for all positions at once.

    Each sequence ``x_1..x_T`` is cut into consecutive chunks of ``max_len + 1`` items that overlap
    by one (stride ``max_len``), so every transition ``x_t → x_{t+1}`` (t ≥ 1) is a training pair
    exactly once. Returns right-aligned inputs ``[m, max_len]`` (pad = ``pad_value``) and targets
    ``[m, max_len]`` (−100 = no target, ignored by the loss).
    """
    inputs, targets = [], []
    for seq in sequences:
        seq = list(seq)
        for end in range(len(seq), 1, -max_len):
            chunk = seq[max(0, end - max_len - 1) : end]
            inp = np.full(max_len, pad_value, dtype=np.int64)
            tgt = np.full(max_len, -100, dtype=np.int64)
            inp[max_len - len(chunk) + 1 :] = chunk[:-1]
            tgt[max_len - len(chunk) + 1 :] = chunk[1:]
            inputs.append(inp)
            targets.append(tgt)
    if not inputs:
        raise RankingError("no training transitions: every training sequence has fewer than 2 items")
    return np.stack(inputs), np.stack(targets)


def train_sasrec(
    train_sequences: Sequence[Sequence[int]],
    valid_history: np.ndarray,
    valid_target: np.ndarray,
    model_config: SASRecConfig,
    train_config: TrainConfig,
    item_weights: np.ndarray | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train on users' training sequences (every next-item transition, :func:`training_chunks`),
    full-softmax CE at every position (optionally weighted by the target item's weight, RW), early
    stopping on valid NDCG@10; returns the best epoch's model. ``item_weights`` is ``[n_items]``."""
    tc = train_config
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, tc.num_threads))
    model = SASRec(model_config)
    n_items = model_config.n_items
    if len(valid_target) == 0:
        raise RankingError("SASRec needs a non-empty valid split for early stopping")
    xs, ys = training_chunks(train_sequences, model_config.max_len, model.pad)
    real = ys[ys >= 0]
    if real.min() < 0 or real.max() >= n_items or xs[xs != model.pad].min() < 0 or xs.max() > n_items:
        raise RankingError(f"training items outside the catalog [0, {n_items})")
    x, y = torch.from_numpy(xs), torch.from_numpy(ys)
    w_item = None
    if item_weights is not None:
        if len(item_weights) != n_items:
            raise RankingError(f"{len(item_weights)} item weights for {n_items} items")
        w_item = torch.as_tensor(np.asarray(item_weights), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    best_state, best, best_epoch, bad = None, -1.0, 0, 0
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    for epoch in range(1, tc.epochs + 1):
        model.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        batches = range(0, x.shape[0], tc.batch_size)
        it = tqdm(batches, desc=f"sasrec epoch {epoch}", leave=False, disable=None if progress else True) if tqdm else batches
        total, count = 0.0, 0
        for i in it:
            idx = perm[i : i + tc.batch_size]
            h = model.hidden(x[idx])  # [b, L, d]
            yb = y[idx]
            keep = yb >= 0
            tgt = yb[keep]
            ce = nn.functional.cross_entropy(model.logits(h[keep]), tgt, reduction="none")
            loss = (ce * w_item[tgt]).mean() if w_item is not None else ce.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().item() * len(tgt)
            count += len(tgt)
        topk, _ = model.score_topk(valid_history, 10, tc.eval_batch_size)
        v = ndcg_at_k(topk, np.asarray(valid_target), 10)
        elapsed = time.perf_counter() - t0
        history.append({"epoch": epoch, "loss": total / count, "valid_ndcg10": v, "seconds": elapsed})
        log.info("sasrec epoch %d: loss %.4f, valid NDCG@10 %.4f (%.0fs)", epoch, total / count, v, elapsed)
        if v > best:
            best, best_epoch, bad = v, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        if bad >= tc.patience or elapsed > tc.max_minutes * 60:
            break
    torch.set_num_threads(prev_threads)
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, history, best_epoch, best, time.perf_counter() - t0)

"""FlexCode: a popularity-aware dual codebook (collaborative + semantic) under a fixed token budget.

The paper (Peláez et al. 2025, arXiv 2511.20673) publishes only its abstract: "a popularity-aware
framework that adaptively allocates a fixed token budget between a CF codebook and a semantic
codebook; a lightweight MoE balances CF-specific precision and semantic generalization, while an
alignment and smoothness objective maintains coherence across the popularity spectrum", claiming
"stronger accuracy and tail robustness". What follows is OUR concrete design of that idea.

Views. Every item ``i`` has a semantic vector ``x_s(i)`` (the text item-embeddings artifact) and a
CF vector ``x_c(i)`` (SASRec's item embeddings ``E[i]`` from ``model/<dataset>-sasrec``, or, when
absent, a rank-``r`` TruncatedSVD of the log-scaled training item-user matrix
``M[i, u] = log(1 + #(u, i))``: ``x_c = U_r Σ_r``), both L2-normalised; ``n_i`` = training count.

Token budget and SID layout. A SID has ``L`` tokens. Item ``i`` spends ``k_i`` of them on the CF
codebook and ``L - k_i`` on the semantic codebook, **semantic first**:

    SID(i) = (s_0, ..., s_{L-k_i-1}, c_0, ..., c_{k_i-1})

with ``k_i ∈ [min_cf_tokens, max_cf_tokens]`` (default ``[0, L-1]``, so level 0 is always
semantic). Why semantic first: the coarse levels of the prefix tree stay one semantic hierarchy for
the whole catalog (a tail item shares its coarse prefix with semantically similar head items, so
the generator's probability mass reaches it: generalization), while a popular item's fine levels
are collaborative codes that separate semantically similar items by who consumes them (precision,
memorization). Level ``l``'s token space is split into **disjoint ranges**: semantic codes
``[0, K^s_l)`` and CF codes ``[K^s_l, K^s_l + K^c_l)`` with ``K^s_l + K^c_l ≤ K`` (``codebook_size``),
so a token tells its view and any SID set is a prefix tree for constrained decoding. ``K`` is
shared between the views in proportion to the items routed to each at that level.

CF reliability. ``w_c(i) = n_i / (n_i + λ)``, ``w_s = 1 - w_c``: the Bayesian shrinkage of a CF
estimate from ``n_i`` interactions toward a text prior worth ``λ`` interactions (``shrinkage``).
``λ`` is a FIXED number of interactions, 5 by default (the usual 5-core threshold below which an
item's collaborative signal is considered too sparse), never a statistic of the data: with the
median count, adding or removing popular items would move every other item's reliability and so
the allocation thresholds.

Allocation (the MoE gate), decided before and independently of the latent training, so it does
not depend on the number of epochs, the learning rate or how far the joint run got:

- tail rule (tail robustness): an item whose CF signal is unreliable, ``n_i = 0`` or
  ``w_c(i) < min_cf_reliability`` (default 1/2, i.e. ``n_i < λ``), keeps ALL its semantic tokens
  (``k_i = min_cf_tokens``): a CF vector estimated from a handful of interactions is mostly noise,
  and spending the finest semantic token on it costs the tail item its semantic resolution. The
  gate decides the other items (and the budget penalty counts the fixed ones).
- distortion target, per item and allocation ``k``: with ``e_v(i, j)`` the squared residual of
  ``x_v(i)`` after ``j`` codes of an RQ-KMeans of view ``v`` in its INPUT space (``L`` levels of
  ``K`` codes; the CF one fitted on interacted items), relative to the view's mean ``||x_v||²``,

      D_k(i) = w_s(i) · e_s(i, L - k) + w_c(i) · e_c(i, k)

  the reliability-weighted share of each view the SID fails to carry. It is a function of the
  item's own vectors, count and the fixed ``λ`` only (input-space errors: deterministic given the
  seed, unlike the latents' errors, which keep changing while the encoders train).
- gate: a lightweight MoE ``π(i) = Σ_m softmax(W g_i)_m · softmax(f_m(g_i))`` over allocations,
  fed what an MoE over the two views should see: ``g_i = [x_s(i), x_c(i), popularity features
  (log(1+n)/log(1+max n), percentile rank, 1{n = 0}), w_c(i)]``. Two items with equal counts get
  different allocations when their views quantize differently. Trained full batch for
  ``gate_steps`` steps (own seed) on ``γ · mean_i Σ_k π_k(i) D̃_k(i)`` (``D̃``: ``D`` standardised per
  item, same argmin, O(1) gradients) ``+ η · L_smooth (+ ρ (mean_i E_π[k]/L - cf_share)²)``.
- smoothness ``L_smooth = mean_b ||π̄_(b+1) - π̄_b||²``, ``π̄_b`` the mean allocation of the
  gate-decided items in popularity bin ``b`` (items sorted by count, cut into at most 20 bins of
  about equal size, equal counts in one bin): neighbouring popularity gets similar allocations on
  average, while single items still follow their views (a bin averages many items).
- ``k_i = argmax_k π_k(i)``.

Shared latent (torch, per minibatch). Encoders ``z_v = E_v(x_v)`` (MLPs into ``R^d``), per-view
residual quantizers with ``L`` levels of ``K`` codes (k-means initialised), decoders ``D_v``:
``L = L_rec + L_q + α L_align`` with reconstruction ``Σ_v ||x_v - D_v(ẑ_v)||²`` (straight-through;
CF only on ``n_i > 0``), quantization ``Σ_v Σ_l ||sg(r^v_l) - e^v_l||² + β ||r^v_l - sg(e^v_l)||²``
and alignment = symmetric InfoNCE between ``z_s(i)`` and ``z_c(i)`` over items with ``n_i > 0``:
the two codebooks live in one space and agree on an item.

Discrete codes. Level by level, the items whose level ``l`` is semantic (``l < L - k_i``) quantize
their semantic latent residual with a faiss k-means codebook of ``K^s_l`` codes fitted on them; the
others quantize their CF latent residual with ``K^c_l`` codes (a CF level-``l`` codebook serves CF
depths ``0..l``: depth varies with ``k_i``). A cold item (``n_i = 0``, only when
``min_cf_tokens > 0``) quantizes its semantic latent in place of its CF one: its CF vector carries
no evidence and the alignment puts both views in one space. Residuals are updated per view, as in
RQ-KMeans. The standard collision handling (``extra_level``) then makes every SID unique.

Artifact. The standard ``codebook``: codewords per level are the two views' codewords stacked in
token order (latent space, dimension ``d``); ``encoder.safetensors`` holds the semantic encoder
``E_s`` (``encoder_config["kind"] = "flexcode-semantic"``), so a NEW item (text embedding, same
encoder, no interactions) gets a SID without retraining: ``E_s(x)``, the cold allocation
``k = min_cf_tokens`` (more only if a trailing level has no semantic code), semantic codes greedily
per level, a cold CF part from the semantic latent, then the smallest free disambiguation token
(:func:`assign_new_flexcode_items`). ``stats["flexcode"]`` holds the per-item allocation
``cf_tokens``, the per-level ``token_split``, ``λ``, the gate's allocation curve over popularity,
and, after CRAB rebalancing, ``token_origin`` (per level, the FlexCode token each rebalanced token
descends from) so that split tokens keep their view (:func:`token_views`, :func:`cf_tokens_of`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.tokenizer.codebook import Codebook
from components.tokenizer.encoders import TokenizerError, check_embeddings

log = logging.getLogger(__name__)

DEFAULT_SHRINKAGE = 5.0  # λ when tokenizer.flexcode.shrinkage is null: a text prior worth 5 interactions
ENCODER_KIND = "flexcode-semantic"


# ---- CF view -----------------------------------------------------------------------------------
@dataclass
class CFView:
    """CF item vectors ``[n_items, d]`` and where they came from (``source``: sasrec | mf)."""

    embeddings: np.ndarray
    source: str
    ref: str | None = None  # the SASRec model artifact, when used


def mf_item_embeddings(train_sequences: list[list[int]], n_items: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """TruncatedSVD of ``M[i, u] = log(1 + #(u, i))``: item vectors ``U_r Σ_r`` ``[n_items, r]``
    with ``r = min(dim, n_items - 1, n_users - 1)``; items with no training interaction get 0."""
    from scipy.sparse import csr_matrix
    from sklearn.decomposition import TruncatedSVD

    rows, cols = [], []
    for u, seq in enumerate(train_sequences):
        rows.extend(int(i) for i in seq)
        cols.extend([u] * len(seq))
    n_users = len(train_sequences)
    if not rows:
        raise TokenizerError("mf CF view: no training interactions")
    rows_a = np.asarray(rows, dtype=np.int64)
    if rows_a.min() < 0 or rows_a.max() >= n_items:
        raise TokenizerError(f"mf CF view: item index outside [0, {n_items})")
    m = csr_matrix((np.ones(len(rows_a), dtype=np.float32), (rows_a, np.asarray(cols))), shape=(n_items, n_users))
    m.sum_duplicates()
    m.data = np.log1p(m.data)
    r = max(1, min(dim, n_items - 1, n_users - 1))
    return TruncatedSVD(n_components=r, random_state=seed).fit_transform(m).astype(np.float32)


def load_cf_view(registry: Any, dataset: Any, dataset_name: str, p: Any, seed: int = 0) -> CFView:
    """The CF view for ``tokenizer.flexcode`` params ``p`` (see ``cf_source``)."""
    from components.registry import ArtifactNotFound

    if p.cf_source in ("sasrec", "auto"):
        ref = p.sasrec_model or f"model/{dataset_name}-sasrec@latest"
        try:
            art = registry.load(ref)
        except ArtifactNotFound:
            if p.cf_source == "sasrec":
                raise
            art = None
        if art is not None:
            from components.evaluation.baselines.sasrec import SASRec

            emb = SASRec.from_artifact(art).item_embeddings()
            if emb.shape[0] != dataset.n_items:
                raise TokenizerError(f"{art.ref} has {emb.shape[0]} item embeddings, dataset has {dataset.n_items} items")
            return CFView(emb, "sasrec", art.ref)
    return CFView(mf_item_embeddings(dataset.train_sequences(), dataset.n_items, p.mf_dim, seed), "mf")


# ---- reliability, popularity features and the allocation target --------------------------------
def shrinkage_of(p: Any) -> float:
    """``λ`` (interactions the text prior is worth): ``p.shrinkage``, or the fixed default 5."""
    return float(p.shrinkage) if p.shrinkage is not None else DEFAULT_SHRINKAGE


def cf_reliability(counts: np.ndarray, lam: float) -> np.ndarray:
    """``w_c = n / (n + λ)`` per item (0 for a cold item)."""
    c = np.asarray(counts, dtype=np.float64)
    return c / (c + float(lam))


def popularity_features(counts: np.ndarray) -> np.ndarray:
    """``[n, 3]``: log-popularity scaled to [0, 1], percentile rank (ties averaged), cold flag."""
    from scipy.stats import rankdata

    c = np.asarray(counts, dtype=np.float64)
    logp = np.log1p(c) / max(np.log1p(c.max()), 1e-12)
    pct = (rankdata(c, method="average") - 1) / max(len(c) - 1, 1)
    return np.stack([logp, pct, (c == 0).astype(np.float64)], 1).astype(np.float32)


def gate_inputs(x_s: np.ndarray, x_c: np.ndarray, counts: np.ndarray, lam: float) -> np.ndarray:
    """The gate's input ``[n, d_s + d_c + 4]``: both views (a cold item's CF vector zeroed: it
    carries no evidence), the popularity features and the CF reliability ``w_c``."""
    c = np.asarray(counts)
    xc = np.where((c > 0)[:, None], x_c, 0.0)
    return np.concatenate([x_s, xc, popularity_features(c), cf_reliability(c, lam)[:, None]], 1).astype(np.float32)


def allocation_range(levels: int, p: Any) -> tuple[int, int]:
    hi = levels - 1 if p.max_cf_tokens is None else p.max_cf_tokens
    lo = p.min_cf_tokens
    if hi > levels:
        raise TokenizerError(f"tokenizer.flexcode.max_cf_tokens={hi} exceeds the {levels} SID levels")
    if lo > hi:
        raise TokenizerError(f"tokenizer.flexcode.min_cf_tokens={lo} > max_cf_tokens={hi}")
    return lo, hi


def unreliable_cf(counts: np.ndarray, lam: float, min_reliability: float) -> np.ndarray:
    """Items that keep all semantic tokens (the tail rule): cold, or ``w_c < min_reliability``."""
    c = np.asarray(counts)
    return (c == 0) | (cf_reliability(c, lam) < min_reliability)


def mix_distortion(es, ec, n, lam: float, kv):
    """``D_k(i) = w_s(i) e_s(i, L-k) + w_c(i) e_c(i, k)`` ``[n, A]`` for ``k`` in ``kv`` from the
    per-view relative errors after ``j = 0..L`` codes ``es``/``ec`` ``[L+1, n]`` (numpy or torch)."""
    L = es.shape[0] - 1
    wc = (n / (n + lam))[None]
    return ((1 - wc) * es[L - kv] + wc * ec[kv]).T


def allocation_distortion(zs, zc, ps, pc, n, lam: float, kv):
    """:func:`mix_distortion` from vectors and their quantized prefix sums ``[L+1, B, d]`` (torch),
    each view's error relative to the mean of ``||z_v||²`` (the error of spending no token on it)."""
    es = ((zs.unsqueeze(0) - ps) ** 2).sum(-1) / (zs**2).sum(1).mean().clamp_min(1e-8)  # [L+1, B]
    ec = ((zc.unsqueeze(0) - pc) ** 2).sum(-1) / (zc**2).sum(1).mean().clamp_min(1e-8)
    return mix_distortion(es, ec, n, lam, kv)


def standardize(d):
    """Per item (row), ``(D_k - mean_k D) / (std_k D + 1e-6)``: same argmin, O(1) gate gradients."""
    return (d - d.mean(1, keepdim=True)) / (d.std(1, keepdim=True, unbiased=False) + 1e-6)


def _fit_view(r: np.ndarray, k: int, niter: int, seed: int, mppc: int) -> tuple[np.ndarray, np.ndarray]:
    from components.tokenizer.rq_kmeans import kmeans, nearest

    if k >= len(r):  # as many codes as points: each point is its own code
        return np.ascontiguousarray(r[:k], dtype=np.float32), np.arange(len(r), dtype=np.int32)
    cw = kmeans(r, k, niter, seed, mppc)
    return cw, nearest(r, cw)[1][:, 0].astype(np.int32)


def view_errors(x: np.ndarray, levels: int, size: int, niter: int = 20, seed: int = 0, mppc: int = 256, fit_on: np.ndarray | None = None) -> np.ndarray:
    """``[L+1, n]``: ``||x_i - x̂_i^{(j)}||²`` after ``j = 0..L`` codes of an RQ-KMeans of ``x``
    (``size`` codes per level, fitted on the rows ``fit_on``, default all; every row is assigned),
    divided by the mean ``||x||²`` of the fitted rows."""
    from components.tokenizer.rq_kmeans import nearest

    r = np.array(x, dtype=np.float32)
    fit = np.arange(len(r)) if fit_on is None else np.flatnonzero(fit_on)
    out = [(r**2).sum(1)]
    for lvl in range(levels):
        if len(fit):
            cw, _ = _fit_view(r[fit], min(size, len(fit)), niter, seed + lvl, mppc)
            r -= cw[nearest(r, cw)[1][:, 0]]
        out.append((r**2).sum(1))
    m = float(out[0][fit].mean()) if len(fit) else 1.0
    return (np.stack(out) / max(m, 1e-12)).astype(np.float32)


# ---- the MoE gate --------------------------------------------------------------------------------
def _build_gate(in_dim: int, n_alloc: int, experts: int):
    import torch
    from torch import nn

    class Gate(nn.Module):
        """Lightweight MoE: router softmax over experts, each expert a softmax over allocations."""

        def __init__(self) -> None:
            super().__init__()
            self.router = nn.Linear(in_dim, experts)
            self.experts = nn.ModuleList([nn.Sequential(nn.Linear(in_dim, 16), nn.GELU(), nn.Linear(16, n_alloc)) for _ in range(experts)])

        def forward(self, f: torch.Tensor) -> torch.Tensor:
            r = torch.softmax(self.router(f), -1)
            e = torch.stack([torch.softmax(m(f), -1) for m in self.experts], 1)
            return (r.unsqueeze(-1) * e).sum(1)

    return Gate()


def popularity_bins(counts: np.ndarray, max_bins: int = 20) -> tuple[np.ndarray, int]:
    """(bin of each item ``int64 [n]``, number of bins): items sorted by count, cut into
    ``min(max_bins, distinct counts)`` bins of about equal size, equal counts always in one bin."""
    c = np.asarray(counts)
    uniq, inv = np.unique(c, return_inverse=True)
    b = min(max_bins, len(uniq))
    first = np.searchsorted(np.sort(c), uniq)  # rank of each distinct count's first item
    of_value = np.minimum(first * b // max(len(c), 1), b - 1)
    _, dense = np.unique(of_value, return_inverse=True)  # drop empty bins
    return dense[inv].astype(np.int64), int(dense.max()) + 1 if len(c) else 0


def gate_losses(pi, dist, kv, groups, n_groups: int, levels: int, p: Any, n_fixed: int = 0, fixed_tokens: float = 0.0):
    """(γ·E_π[D̃] (+ ρ·budget), η·smoothness) over the gate-decided items (module docstring);
    ``groups``: each item's popularity bin (:func:`popularity_bins`, ascending). The budget counts
    the ``n_fixed`` items the tail rule decided too (``fixed_tokens`` CF tokens each)."""
    import torch

    loss = p.gate_weight * (pi * dist).sum(1).mean()
    if p.cf_share is not None:
        mean_k = ((pi * kv).sum() + n_fixed * fixed_tokens) / (len(pi) + n_fixed)
        loss = loss + p.budget_weight * (mean_k / levels - p.cf_share) ** 2
    if n_groups > 1:
        tot = torch.zeros(n_groups, pi.shape[1], dtype=pi.dtype, device=pi.device).index_add_(0, groups, pi)
        cnt = torch.bincount(groups, minlength=n_groups).clamp_min(1).unsqueeze(1)
        mean = tot / cnt
        smooth = ((mean[1:] - mean[:-1]) ** 2).sum(1).mean()
    else:
        smooth = pi.new_zeros(())
    return loss, p.smooth_weight * smooth


@dataclass
class AllocationFit:
    """The per-item allocation and how it was decided."""

    cf_tokens: np.ndarray  # int32 [n]
    probs: np.ndarray  # [n, n_alloc] over k = lo..hi
    k_values: np.ndarray  # [n_alloc]
    shrinkage: float
    tail: np.ndarray  # bool [n]: the tail rule kept every semantic token
    curve: list[dict[str, float]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


def fit_allocation(x_s: np.ndarray, x_c: np.ndarray, counts: np.ndarray, levels: int, size: int, p: Any, seed: int = 0, niter: int = 20, mppc: int = 256) -> AllocationFit:
    """CF tokens per item from the MoE gate (module docstring); ``x_s``/``x_c`` L2-normalised."""
    import torch

    from components.tokenizer.encoders import resolve_device

    lo, hi = allocation_range(levels, p)
    kv_np = np.arange(lo, hi + 1)
    lam = shrinkage_of(p)
    c = np.asarray(counts)
    n = len(c)
    tail = unreliable_cf(c, lam, p.min_cf_reliability)
    decided = np.flatnonzero(~tail)
    probs = np.zeros((n, len(kv_np)), dtype=np.float32)
    probs[:, 0] = 1.0
    history: list[dict[str, Any]] = []
    if len(kv_np) > 1 and len(decided):
        es = view_errors(x_s, levels, size, niter, seed + 2000, mppc)
        ec = view_errors(x_c, levels, size, niter, seed + 3000, mppc, fit_on=c > 0)
        dist = mix_distortion(es.astype(np.float64), ec.astype(np.float64), c.astype(np.float64), lam, kv_np)
        dev = torch.device(resolve_device(p.device))
        f = torch.from_numpy(gate_inputs(x_s, x_c, c, lam)[decided]).to(dev)
        d = standardize(torch.from_numpy(dist[decided].astype(np.float32)).to(dev))
        groups, n_bins = popularity_bins(c[decided])
        g = torch.from_numpy(groups).to(dev)
        kv = torch.from_numpy(kv_np.astype(np.float32)).to(dev)
        torch.manual_seed(seed)
        gate = _build_gate(f.shape[1], len(kv_np), p.experts).to(dev)
        opt = torch.optim.Adam(gate.parameters(), lr=p.gate_lr)
        for _ in range(p.gate_steps):
            loss, smooth = gate_losses(gate(f), d, kv, g, n_bins, levels, p, int(tail.sum()), float(lo))
            opt.zero_grad()
            (loss + smooth).backward()
            opt.step()
        with torch.no_grad():
            pi = gate(f)
            loss, smooth = gate_losses(pi, d, kv, g, n_bins, levels, p, int(tail.sum()), float(lo))
        probs[decided] = pi.cpu().numpy()
        best = dist[decided].argmin(1)
        history.append({"gate_steps": p.gate_steps, "gate": round(float(loss), 5), "smooth": round(float(smooth), 5),
                        "agreement_with_argmin_distortion": round(float((probs[decided].argmax(1) == best).mean()), 4),
                        "mean_relative_error_semantic": [round(float(v), 4) for v in es.mean(1)],
                        "mean_relative_error_cf": [round(float(v), 4) for v in ec[:, c > 0].mean(1)] if (c > 0).any() else []})
    cf_tokens = kv_np[probs.argmax(1)].astype(np.int32)
    cf_tokens[tail] = lo
    uq = np.unique(c)
    pick = uq[np.unique(np.linspace(0, len(uq) - 1, min(len(uq), 12)).round().astype(int))]
    curve = [{"count": int(v), "items": int((c == v).sum()), "expected_cf_tokens": round(float((probs[c == v] @ kv_np).mean()), 4),
              "mean_cf_tokens": round(float(cf_tokens[c == v].mean()), 4)} for v in pick]
    return AllocationFit(cf_tokens, probs, kv_np, lam, tail, curve, history)


# ---- shared latent -----------------------------------------------------------------------------
def _mlp(a: int, hidden: int, b: int):
    from torch import nn

    return nn.Sequential(nn.Linear(a, hidden), nn.GELU(), nn.Linear(hidden, b))


def _build_net(in_s: int, in_c: int, levels: int, size: int, p: Any):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc_s, self.enc_c = _mlp(in_s, p.hidden, p.latent_dim), _mlp(in_c, p.hidden, p.latent_dim)
            self.dec_s, self.dec_c = _mlp(p.latent_dim, p.hidden, in_s), _mlp(p.latent_dim, p.hidden, in_c)
            self.cb_s = nn.Parameter(torch.zeros(levels, size, p.latent_dim))
            self.cb_c = nn.Parameter(torch.zeros(levels, size, p.latent_dim))

    return Net()


def _rq(z, cb, beta: float):
    """Residual quantization with codebooks ``cb [L, K, d]``: (straight-through ẑ, quantization loss)."""
    import torch

    r, acc, loss = z, torch.zeros_like(z), z.new_zeros(())
    for lvl in range(cb.shape[0]):
        idx = torch.cdist(r.detach(), cb[lvl]).argmin(1)
        e = cb[lvl][idx]
        loss = loss + ((r.detach() - e) ** 2).sum(1).mean() + beta * ((r - e.detach()) ** 2).sum(1).mean()
        acc = acc + e
        r = r - e.detach()
    return z + (acc - z).detach(), loss


def _info_nce(a, b, tau: float):
    import torch
    import torch.nn.functional as F

    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / tau
    y = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y))


@dataclass
class FlexCodeFit:
    """Trained latents, the semantic encoder's weights (for new items) and the loss history."""

    z_s: np.ndarray
    z_c: np.ndarray
    semantic_encoder: dict[str, np.ndarray]
    encoder_config: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def train_flexcode(x_s: np.ndarray, x_c: np.ndarray, counts: np.ndarray, levels: int, size: int, p: Any, seed: int = 0, progress: bool = False) -> FlexCodeFit:
    """Jointly train both views' encoders, codebooks and decoders with the alignment (module docstring)."""
    import torch
    from tqdm.auto import tqdm

    from components.tokenizer.encoders import resolve_device
    from components.tokenizer.rq_kmeans import kmeans, nearest

    n = len(x_s)
    dev = torch.device(resolve_device(p.device))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = _build_net(x_s.shape[1], x_c.shape[1], levels, size, p).to(dev)
    xs, xc = torch.from_numpy(x_s).to(dev), torch.from_numpy(x_c).to(dev)
    cnt = torch.from_numpy(np.asarray(counts, dtype=np.float32)).to(dev)
    with torch.no_grad():  # k-means init of both codebooks on the initial latents' residuals
        for enc, cb, x in ((net.enc_s, net.cb_s, xs), (net.enc_c, net.cb_c, xc)):
            r = np.ascontiguousarray(enc(x).cpu().numpy(), dtype=np.float32)
            for lvl in range(levels):
                cw = kmeans(r, size, 10, seed + lvl)
                cb[lvl] = torch.from_numpy(cw).to(dev)
                r = r - cw[nearest(r, cw)[1][:, 0]]
    opt = torch.optim.Adam(net.parameters(), lr=p.lr)
    history: list[dict[str, float]] = []
    for ep in tqdm(range(p.epochs), desc="flexcode", disable=not progress):
        perm = torch.randperm(n, generator=g).to(dev)
        sums: dict[str, float] = {}
        for s in range(0, n, p.batch_size):
            b = perm[s : s + p.batch_size]
            zs, zc = net.enc_s(xs[b]), net.enc_c(xc[b])
            qs, ls = _rq(zs, net.cb_s, p.beta)
            qc, lc = _rq(zc, net.cb_c, p.beta)
            seen = cnt[b] > 0
            rec = ((net.dec_s(qs) - xs[b]) ** 2).sum(1).mean()
            if seen.any():
                rec = rec + ((net.dec_c(qc[seen]) - xc[b][seen]) ** 2).sum(1).mean()
            align = _info_nce(zs[seen], zc[seen], p.temperature) if int(seen.sum()) > 1 else zs.new_zeros(())
            loss = rec + ls + lc + p.align_weight * align
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in (("loss", loss), ("rec", rec), ("quant", ls + lc), ("align", align)):
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(b) / n
        history.append({"epoch": ep, **{k: round(v, 5) for k, v in sums.items()}})
    net.eval()
    with torch.no_grad():
        z_s, z_c = net.enc_s(xs).cpu().numpy(), net.enc_c(xc).cpu().numpy()
    weights = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.enc_s.state_dict().items()}
    config = {"kind": ENCODER_KIND, "in_dim": int(x_s.shape[1]), "hidden": int(p.hidden), "latent_dim": int(p.latent_dim), "activation": "gelu", "input": "l2-normalised text embedding"}
    return FlexCodeFit(z_s.astype(np.float32), z_c.astype(np.float32), weights, config, history)


def semantic_latents(x: np.ndarray, weights: dict[str, np.ndarray], config: dict[str, Any]) -> np.ndarray:
    """``E_s(x / ||x||)`` with the stored semantic encoder of a FlexCode codebook."""
    import torch

    if config.get("kind") != ENCODER_KIND:
        raise TokenizerError(f"not a FlexCode semantic encoder (encoder_config kind {config.get('kind')!r})")
    enc = _mlp(int(config["in_dim"]), int(config["hidden"]), int(config["latent_dim"]))
    enc.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in weights.items()})
    enc.eval()
    with torch.no_grad():
        return enc(torch.from_numpy(_l2(x))).numpy().astype(np.float32)


# ---- discrete codes ----------------------------------------------------------------------------
def split_budget(n_sem: int, n_cf: int, size: int) -> tuple[int, int]:
    """Codes of a level for (semantic, CF): ``size`` shared in proportion to the items routed to
    each view, every non-empty view at least ``min(2, n_v)`` codes and at most ``n_v``."""
    if n_sem + n_cf == 0:
        raise TokenizerError("no items to quantize")
    if n_cf == 0:
        return min(size, n_sem), 0
    if n_sem == 0:
        return 0, min(size, n_cf)
    if size < 2:
        raise TokenizerError(f"codebook_size {size} cannot hold both views")
    k_cf = int(round(size * n_cf / (n_sem + n_cf)))
    k_cf = min(max(k_cf, min(2, n_cf), 1), n_cf, size - 1)
    k_sem = min(size - k_cf, n_sem)
    return k_sem, k_cf


@dataclass
class DualCodes:
    codes: np.ndarray  # int32 [n, L], level-local tokens (semantic range first)
    sizes: list[int]
    codewords: list[np.ndarray]  # per level [K_s + K_c, d]
    split: list[dict[str, int]]  # per level {"semantic": K_s, "cf": K_c}
    quant_error: dict[str, float]  # final mean squared residual per view


def dual_residual_codes(z_s: np.ndarray, z_c: np.ndarray, cf_tokens: np.ndarray, levels: int, size: int, niter: int = 20, seed: int = 0, mppc: int = 256) -> DualCodes:
    """Routed residual k-means: level ``l`` of item ``i`` is semantic iff ``l < L - cf_tokens[i]``."""
    n = len(z_s)
    cf_tokens = np.asarray(cf_tokens)
    if cf_tokens.shape != (n,) or cf_tokens.min() < 0 or cf_tokens.max() > levels:
        raise TokenizerError(f"cf_tokens must be [n] integers in [0, {levels}]")
    rs, rc = z_s.astype(np.float32).copy(), z_c.astype(np.float32).copy()
    codes = np.zeros((n, levels), dtype=np.int32)
    sizes, cws, split = [], [], []
    for lvl in range(levels):
        is_cf = lvl >= levels - cf_tokens
        S, C = np.flatnonzero(~is_cf), np.flatnonzero(is_cf)
        ks, kc = split_budget(len(S), len(C), size)
        parts = []
        if len(S):
            cw, c = _fit_view(rs[S], ks, niter, seed + lvl, mppc)
            codes[S, lvl] = c
            rs[S] -= cw[c]
            parts.append(cw)
        if len(C):
            cw, c = _fit_view(rc[C], kc, niter, seed + 1000 + lvl, mppc)
            codes[C, lvl] = ks + c
            rc[C] -= cw[c]
            parts.append(cw)
        sizes.append(ks + kc)
        cws.append(np.concatenate(parts).astype(np.float32))
        split.append({"semantic": int(ks), "cf": int(kc), "items_semantic": int(len(S)), "items_cf": int(len(C))})
    qe = {"semantic": float((rs**2).sum(1).mean()), "cf": float((rc[cf_tokens > 0] ** 2).sum(1).mean()) if (cf_tokens > 0).any() else 0.0}
    return DualCodes(codes, sizes, cws, split, qe)


def allocation_summary(cf_tokens: np.ndarray, counts: np.ndarray, levels: int, n_groups: int = 5, head_fraction: float = 0.2) -> dict[str, Any]:
    """Mean CF tokens per popularity group (equal item counts, ascending: group 0 = tail) and head/tail."""
    order = np.argsort(np.asarray(counts), kind="stable")
    groups = np.array_split(order, n_groups)
    n_head = max(1, int(round(head_fraction * len(order))))
    head, tail = order[-n_head:], order[:-n_head]
    return {
        "histogram": {int(k): int((cf_tokens == k).sum()) for k in range(levels + 1)},
        "mean_cf_tokens": float(cf_tokens.mean()),
        "mean_cf_tokens_by_group": [float(cf_tokens[g].mean()) for g in groups],
        "mean_cf_tokens_head": float(cf_tokens[head].mean()),
        "mean_cf_tokens_tail": float(cf_tokens[tail].mean()) if len(tail) else float("nan"),
    }


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def build_flexcode_codebook(
    emb: np.ndarray,
    item_ids: list[str],
    p: Any,
    item_counts: np.ndarray | None,
    cf_view: CFView | None,
    seed: int = 0,
    dataset_ref: str | None = None,
    progress: bool = False,
) -> Codebook:
    """The FlexCode codebook for ``tokenizer`` params ``p`` (``p.flexcode`` for the method's own)."""
    from components.tokenizer.collisions import resolve_collisions
    from components.tokenizer.rq_kmeans import check_sizes, faiss_threads
    from components.tokenizer.stats import codebook_stats

    faiss_threads(1)  # many small k-means: one OpenMP thread avoids spin-waiting on a shared box
    x = check_embeddings(emb, n_items=len(item_ids))
    if cf_view is None:
        raise TokenizerError("tokenizer.method flexcode needs CF item vectors (components.tokenizer.flexcode.load_cf_view)")
    if item_counts is None:
        raise TokenizerError("tokenizer.method flexcode needs the training item counts (popularity)")
    xc = check_embeddings(cf_view.embeddings, n_items=len(item_ids), what=f"CF item vectors ({cf_view.source})")
    counts = np.asarray(item_counts)
    if counts.shape != (len(item_ids),) or (counts < 0).any():
        raise TokenizerError(f"item counts must be [{len(item_ids)}] non-negative, got shape {counts.shape}")
    if p.collisions != "extra_level":
        raise TokenizerError("tokenizer.method flexcode supports collisions=extra_level only (its levels mix two codeword spaces)")
    L, K, fp = p.levels, p.codebook_size, p.flexcode
    check_sizes(len(x), [K] * L)
    xs_n, xc_n = _l2(x), _l2(xc)
    alloc = fit_allocation(xs_n, xc_n, counts, L, K, fp, seed, p.niter, p.max_points_per_centroid)
    fit = train_flexcode(xs_n, xc_n, counts, L, K, fp, seed, progress)
    cf_tokens = alloc.cf_tokens
    z_c = np.where((counts > 0)[:, None], fit.z_c, fit.z_s)  # a cold item's CF part: its (aligned) semantic latent
    dual = dual_residual_codes(fit.z_s, z_c, cf_tokens, L, K, p.niter, seed, p.max_points_per_centroid)
    raw = dual.codes
    n_raw = int(len(raw) - len(np.unique(raw, axis=0)))
    sids, sizes, n_res = resolve_collisions(raw, dual.sizes, p.collisions)
    stats = codebook_stats(sids, sizes, counts, x)
    stats.update({"method": "flexcode", "collisions_raw": n_raw, "collisions_resolved": n_res, "collision_strategy": p.collisions, "semantic_levels": L})
    stats["flexcode"] = {
        "cf_source": cf_view.source,
        "cf_ref": cf_view.ref,
        "layout": "semantic tokens first, then CF tokens; level l tokens [0, semantic) are semantic codes, [semantic, semantic+cf) CF codes",
        "token_split": dual.split,
        "quant_error": dual.quant_error,
        "shrinkage": alloc.shrinkage,
        "min_cf_reliability": float(fp.min_cf_reliability),
        "cold_cf_tokens": int(allocation_range(L, fp)[0]),
        "tail_items_all_semantic": int(alloc.tail.sum()),
        "gate_inputs": "semantic + CF item vectors, popularity features, CF reliability n/(n+shrinkage)",
        "allocation": allocation_summary(cf_tokens, counts, L),
        "gate_curve": alloc.curve,
        "final_losses": [h for h in fit.history if "epoch" in h][-1:] + alloc.history,
        "cf_tokens": cf_tokens.tolist(),
    }
    log.info("flexcode: mean CF tokens %.3f (%d tail items all semantic), %d raw collisions", cf_tokens.mean(), int(alloc.tail.sum()), n_raw)
    return Codebook(sids=sids, sizes=sizes, item_ids=list(item_ids), method="flexcode", codewords=dict(enumerate(dual.codewords)), stats=stats,
                    dataset_ref=dataset_ref, encoder_weights=fit.semantic_encoder, encoder_config=fit.encoder_config)


# ---- reading a FlexCode codebook (also after CRAB rebalancing) -----------------------------------
def is_flexcode(codebook: Codebook) -> bool:
    return "flexcode" in (codebook.stats or {}) and "token_split" in codebook.stats["flexcode"]


def token_views(codebook: Codebook) -> list[np.ndarray]:
    """Per quantized level, bool ``[sizes[l]]``: True where the token is a CF code. A token added
    by rebalancing has the view of the FlexCode token it descends from (``stats["flexcode"]["token_origin"]``)."""
    if not is_flexcode(codebook):
        raise TokenizerError(f"codebook {codebook.method!r} is not a FlexCode codebook (no stats['flexcode']['token_split'])")
    fc = codebook.stats["flexcode"]
    split, origin = fc["token_split"], fc.get("token_origin")
    views = []
    for lvl, s in enumerate(split):
        o = np.arange(codebook.sizes[lvl]) if origin is None else np.asarray(origin[lvl], dtype=np.int64)
        if len(o) != codebook.sizes[lvl]:
            raise TokenizerError(f"level {lvl}: stats['flexcode']['token_origin'] has {len(o)} entries for {codebook.sizes[lvl]} tokens")
        if len(o) and o.max() >= s["semantic"] + s["cf"]:
            raise TokenizerError(f"level {lvl}: a token descends from a token outside the FlexCode split")
        views.append(o >= s["semantic"])
    return views


def cf_tokens_of(codebook: Codebook) -> np.ndarray:
    """Per-item CF token count of a FlexCode codebook, recomputed from its SIDs and token views."""
    views = token_views(codebook)
    return np.stack([views[lvl][codebook.sids[:, lvl]] for lvl in range(len(views))], 1).sum(1).astype(np.int32)


def new_item_support(codebook: Codebook) -> str | None:
    """Why new items cannot be placed in this FlexCode codebook (None: they can)."""
    if codebook.encoder_config.get("kind") != ENCODER_KIND or not codebook.encoder_weights:
        return "this FlexCode codebook stores no semantic encoder (built before new-item support): new items cannot be placed; rebuild the codebook"
    L = len(codebook.stats["flexcode"]["token_split"])
    if any(lvl not in codebook.codewords for lvl in range(L)):
        return f"this FlexCode codebook lacks codewords for levels 0..{L - 1}"
    if codebook.n_levels != L + 1:
        return "this FlexCode codebook has no disambiguation level"
    return None


def _quantize_new(codebook: Codebook, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes of levels ``0..L-2`` ``[m, L-1]``, the last level's candidate tokens ``[A]``, their
    ranking by distance per item ``[m, A]``) for new items (see :func:`assign_new_flexcode_items`)."""
    from components.tokenizer.rq_kmeans import nearest

    why = new_item_support(codebook)
    if why:
        raise TokenizerError(why)
    cfg = codebook.encoder_config
    x = check_embeddings(embeddings, dim=int(cfg["in_dim"]), what="new item embeddings")
    z = semantic_latents(x, codebook.encoder_weights, cfg)
    views = token_views(codebook)
    L = len(views)
    no_sem = 0
    while no_sem < L and not (~views[L - 1 - no_sem]).any():
        no_sem += 1
    k = max(int(codebook.stats["flexcode"].get("cold_cf_tokens", 0)), no_sem)
    cand = []
    for lvl in range(L):
        ids = np.flatnonzero(views[lvl] if lvl >= L - k else ~views[lvl])
        if not len(ids):
            raise TokenizerError(f"level {lvl} has no {'CF' if lvl >= L - k else 'semantic'} code for a new item")
        cand.append(ids)
    rs, rc = z.copy(), z.copy()  # the CF part of a cold item starts from its semantic latent
    codes = np.zeros((len(z), L - 1), dtype=np.int64)
    for lvl in range(L - 1):
        r = rc if lvl >= L - k else rs
        cw = codebook.codewords[lvl][cand[lvl]]
        j = nearest(r, cw)[1][:, 0]
        codes[:, lvl] = cand[lvl][j]
        r -= cw[j]
    last = rc if k > 0 else rs
    _, ranked = nearest(last, codebook.codewords[L - 1][cand[L - 1]], len(cand[L - 1]))
    return codes, cand[L - 1], ranked


def new_item_codes(codebook: Codebook, embeddings: np.ndarray) -> np.ndarray:
    """The quantized tokens ``[m, L]`` a new item's text gives (nearest code per level, before the
    search for a free SID): what the catalog gave an item with that text and the same allocation."""
    codes, last, ranked = _quantize_new(codebook, embeddings)
    return np.concatenate([codes, last[ranked[:, :1]]], 1).astype(np.int32)


def assign_new_flexcode_items(codebook: Codebook, embeddings: np.ndarray) -> np.ndarray:
    """SIDs ``[m, n_levels]`` for new items (text embeddings, the codebook's encoder; no
    interactions), unique against the codebook's items and each other.

    A new item is cold: it takes ``k = stats["flexcode"]["cold_cf_tokens"]`` CF tokens (more only
    when trailing levels have no semantic code at all). Its semantic latent ``E_s(x)`` is quantized
    greedily with the semantic codes of levels ``0..L-k-1``; its CF part (if ``k > 0``) quantizes
    the same latent with the CF codes of the last ``k`` levels, as for cold catalog items. The last
    quantized level takes the nearest code of its view under which a disambiguation token is free,
    and the smallest free one. Raises :class:`TokenizerError` when that is impossible."""
    codes, last, ranked = _quantize_new(codebook, embeddings)
    taken = {tuple(row) for row in codebook.sids.tolist()}
    out = np.zeros((len(codes), codebook.n_levels), dtype=np.int32)
    width = codebook.sizes[-1]
    for i in range(len(codes)):
        prefix = tuple(int(t) for t in codes[i])
        full = None
        for j in ranked[i]:
            head = prefix + (int(last[j]),)
            free = next((t for t in range(width) if head + (t,) not in taken), None)
            if free is not None:
                full = head + (free,)
                break
        if full is None:
            raise TokenizerError(f"new item {i}: every SID under prefix {prefix} is taken")
        taken.add(full)
        out[i] = full
    return out

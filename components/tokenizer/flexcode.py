"""FlexCode: a popularity-aware dual codebook (collaborative + semantic) under a fixed token budget.

The paper (Peláez et al. 2025, arXiv 2511.20673) publishes only its abstract: "a popularity-aware
framework that adaptively allocates a fixed token budget between a CF codebook and a semantic
codebook; a lightweight MoE balances CF-specific precision and semantic generalization, while an
alignment and smoothness objective maintains coherence across the popularity spectrum". What
follows is OUR concrete design of that idea.

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

Shared latent and training objective (torch, per minibatch ``B``). Encoders ``z_v = E_v(x_v)``
(MLPs into ``R^d``), per-view residual quantizers with ``L`` levels of ``K`` codes
``e^v_l`` (k-means initialised), decoders ``D_v``:

- reconstruction  ``L_rec = Σ_v ||x_v - D_v(ẑ_v)||²`` (straight-through ``ẑ_v``; CF only on ``n_i > 0``)
- quantization    ``L_q = Σ_v Σ_l ||sg(r^v_l) - e^v_l||² + β ||r^v_l - sg(e^v_l)||²``
- alignment       symmetric InfoNCE between ``z_s(i)`` and ``z_c(i)`` (cosine / temperature τ)
  over items with ``n_i > 0``: the two codebooks live in one space and agree on an item
- gate            the MoE ``π(i) = Σ_m softmax(W p_i)_m · softmax(f_m(p_i))`` over allocations
  ``k``, from popularity features ``p_i = [log(1+n_i)/log(1+max n), percentile rank of n_i,
  1{n_i = 0}]``; it minimises the expected allocation distortion ``L_gate = mean_i Σ_k π_k(i) D_k(i)``,

      D_k(i) = w_s(i) ||z_s - P^s_{L-k}||² / m_s + w_c(i) ||z_c - P^c_k||² / m_c,
      w_c(i) = n_i / (n_i + λ),  w_s(i) = λ / (n_i + λ)

  where ``P^v_j`` is view ``v``'s quantized prefix sum after ``j`` codes (detached; ``P^v_0 = 0``)
  and ``m_v = mean ||z_v||²``: the reliability-weighted share of each view the SID fails to
  carry. The weights are the Bayesian shrinkage of a CF estimate with ``n_i`` observations
  toward a text prior worth ``λ`` observations: a popular item's CF view is reliable and worth
  tokens, a tail item's CF vector is mostly noise (a cold item's is pure noise, ``w_c = 0``).
- smoothness      ``L_smooth = mean_j ||π(p_(j+1)) - π(p_(j))||²`` over the distinct positive
  popularity values sorted ascending: neighbouring popularity gets similar allocations. Cold
  items (``n_i = 0``, no CF evidence at all, ``w_c = 0``) are left out: cold start is a
  categorical regime (the cold flag feature), and smoothing across it would spend a CF token
  on a CF vector that is pure noise
- budget (opt.)   ``(mean_i E_π[k]/L - cf_share)²`` when ``cf_share`` is set

``L = L_rec + L_q + α L_align + γ L_gate + η L_smooth (+ ρ L_budget)``, where the gate sees
``D_k`` standardised per item (same argmin, O(1) gradients). After the joint epochs the gate alone
is refined for ``gate_steps`` full-batch steps on every item's final distortions (it is tiny, and
the allocation must not depend on how far the joint run got).

Discrete codes. ``k_i = argmax_k π_k(i)``. Level by level, the items whose level ``l`` is semantic
(``l < L - k_i``) quantize their semantic latent residual with a faiss k-means codebook of
``K^s_l`` codes fitted on them; the others quantize their CF latent residual with ``K^c_l``
codes (a CF level-``l`` codebook serves CF depths ``0..l``: depth varies with ``k_i``). Residuals
are updated per view, as in RQ-KMeans. The standard collision handling (``extra_level``) then makes
every SID unique. The ``codebook`` artifact is the standard one: codewords per level are the two
views' codewords stacked in token order (latent space, dimension ``d``); ``stats["flexcode"]``
additionally holds the per-item allocation ``cf_tokens``, the per-level split ``token_split`` and
the gate's allocation curve over popularity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.tokenizer.codebook import Codebook
from components.tokenizer.encoders import TokenizerError, check_embeddings

log = logging.getLogger(__name__)


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


# ---- popularity features and the MoE gate ------------------------------------------------------
def popularity_features(counts: np.ndarray) -> np.ndarray:
    """``[n, 3]``: log-popularity scaled to [0, 1], percentile rank (ties averaged), cold flag."""
    from scipy.stats import rankdata

    c = np.asarray(counts, dtype=np.float64)
    logp = np.log1p(c) / max(np.log1p(c.max()), 1e-12)
    pct = (rankdata(c, method="average") - 1) / max(len(c) - 1, 1)
    return np.stack([logp, pct, (c == 0).astype(np.float64)], 1).astype(np.float32)


def allocation_range(levels: int, p: Any) -> tuple[int, int]:
    hi = levels - 1 if p.max_cf_tokens is None else p.max_cf_tokens
    lo = p.min_cf_tokens
    if hi > levels:
        raise TokenizerError(f"tokenizer.flexcode.max_cf_tokens={hi} exceeds the {levels} SID levels")
    if lo > hi:
        raise TokenizerError(f"tokenizer.flexcode.min_cf_tokens={lo} > max_cf_tokens={hi}")
    return lo, hi


def _build_net(in_s: int, in_c: int, levels: int, size: int, n_alloc: int, p: Any):
    import torch
    from torch import nn

    def mlp(a: int, b: int) -> nn.Module:
        return nn.Sequential(nn.Linear(a, p.hidden), nn.GELU(), nn.Linear(p.hidden, b))

    class Gate(nn.Module):
        """Lightweight MoE: router softmax over experts, each expert a softmax over allocations."""

        def __init__(self) -> None:
            super().__init__()
            self.router = nn.Linear(3, p.experts)
            self.experts = nn.ModuleList([nn.Sequential(nn.Linear(3, 16), nn.GELU(), nn.Linear(16, n_alloc)) for _ in range(p.experts)])

        def forward(self, f: torch.Tensor) -> torch.Tensor:
            r = torch.softmax(self.router(f), -1)
            e = torch.stack([torch.softmax(m(f), -1) for m in self.experts], 1)
            return (r.unsqueeze(-1) * e).sum(1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc_s, self.enc_c = mlp(in_s, p.latent_dim), mlp(in_c, p.latent_dim)
            self.dec_s, self.dec_c = mlp(p.latent_dim, in_s), mlp(p.latent_dim, in_c)
            self.cb_s = nn.Parameter(torch.zeros(levels, size, p.latent_dim))
            self.cb_c = nn.Parameter(torch.zeros(levels, size, p.latent_dim))
            self.gate = Gate()

    return Net()


def _rq(z, cb, beta: float):
    """Residual quantization with codebooks ``cb [L, K, d]``: (straight-through ẑ, prefix sums
    ``[L+1, n, d]`` (detached), quantization loss)."""
    import torch

    r, acc, prefix, loss = z, torch.zeros_like(z), [torch.zeros_like(z).detach()], z.new_zeros(())
    for lvl in range(cb.shape[0]):
        idx = torch.cdist(r.detach(), cb[lvl]).argmin(1)
        e = cb[lvl][idx]
        loss = loss + ((r.detach() - e) ** 2).sum(1).mean() + beta * ((r - e.detach()) ** 2).sum(1).mean()
        acc = acc + e
        prefix.append(acc.detach())
        r = r - e.detach()
    return z + (acc - z).detach(), torch.stack(prefix), loss


def allocation_distortion(zs, zc, ps, pc, n, lam: float, kv):
    """``D_k(i) = w_s(i) ||z_s - P^s_{L-k}||² / m_s + w_c(i) ||z_c - P^c_k||² / m_c`` ``[B, A]`` for
    ``k`` in ``kv``, with ``w_c = n/(n+λ)``, ``w_s = λ/(n+λ)`` and ``m_v`` the batch mean of ``||z_v||²``
    (the error of spending no token on view ``v``); ``ps``/``pc`` are prefix sums ``[L+1, B, d]``."""
    L = ps.shape[0] - 1
    es = ((zs.unsqueeze(0) - ps) ** 2).sum(-1) / (zs**2).sum(1).mean().clamp_min(1e-8)  # [L+1, B]
    ec = ((zc.unsqueeze(0) - pc) ** 2).sum(-1) / (zc**2).sum(1).mean().clamp_min(1e-8)
    wc = (n / (n + lam)).unsqueeze(0)
    return ((1 - wc) * es[L - kv] + wc * ec[kv]).T


def standardize(d):
    """Per item (row), ``(D_k - mean_k D) / (std_k D + 1e-6)``: same argmin, O(1) gate gradients."""
    return (d - d.mean(1, keepdim=True)) / (d.std(1, keepdim=True, unbiased=False) + 1e-6)


def _info_nce(a, b, tau: float):
    import torch
    import torch.nn.functional as F

    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / tau
    y = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y))


def gate_losses(gate, feats, grid, dist, kv, levels: int, p: Any):
    """(γ·E_π[D] (+ ρ·budget), η·smoothness) for the MoE ``gate`` (see the module docstring)."""
    pi = gate(feats)
    loss = p.gate_weight * (pi * dist).sum(1).mean()
    if p.cf_share is not None:
        loss = loss + p.budget_weight * ((pi * kv).sum(1).mean() / levels - p.cf_share) ** 2
    pg = gate(grid)
    smooth = ((pg[1:] - pg[:-1]) ** 2).sum(1).mean() if len(pg) > 1 else pi.new_zeros(())
    return loss, p.smooth_weight * smooth


@dataclass
class FlexCodeFit:
    """Trained latents, allocation probabilities and the loss history."""

    z_s: np.ndarray
    z_c: np.ndarray
    probs: np.ndarray  # [n, n_alloc] over k = lo..hi
    k_values: np.ndarray  # [n_alloc]
    history: list[dict[str, float]] = field(default_factory=list)
    gate_curve: list[dict[str, float]] = field(default_factory=list)


def train_flexcode(x_s: np.ndarray, x_c: np.ndarray, counts: np.ndarray, levels: int, size: int, p: Any, seed: int = 0, progress: bool = False) -> FlexCodeFit:
    """Jointly train encoders, both codebooks and the gate (objective in the module docstring)."""
    import torch
    from tqdm.auto import tqdm

    from components.tokenizer.encoders import resolve_device
    from components.tokenizer.rq_kmeans import kmeans, nearest

    lo, hi = allocation_range(levels, p)
    k_values = np.arange(lo, hi + 1)
    n = len(x_s)
    dev = torch.device(resolve_device(p.device))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = _build_net(x_s.shape[1], x_c.shape[1], levels, size, len(k_values), p).to(dev)
    xs, xc = torch.from_numpy(x_s).to(dev), torch.from_numpy(x_c).to(dev)
    cnt = torch.from_numpy(np.asarray(counts, dtype=np.float32)).to(dev)
    feats = torch.from_numpy(popularity_features(counts)).to(dev)
    uniq, first = np.unique(np.asarray(counts), return_index=True)
    warm = uniq > 0  # smoothness runs over interacted items; cold start (no CF evidence) is its own regime
    grid = feats[torch.from_numpy(first[warm]).to(dev)]  # one feature row per distinct popularity > 0, ascending
    gate_grid = feats[torch.from_numpy(first).to(dev)]
    lam = float(p.shrinkage) if p.shrinkage else float(np.median(counts[counts > 0])) if (counts > 0).any() else 1.0
    kv = torch.from_numpy(k_values).to(dev)
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
            qs, ps, ls = _rq(zs, net.cb_s, p.beta)
            qc, pc, lc = _rq(zc, net.cb_c, p.beta)
            seen = cnt[b] > 0
            rec = ((net.dec_s(qs) - xs[b]) ** 2).sum(1).mean()
            if seen.any():
                rec = rec + ((net.dec_c(qc[seen]) - xc[b][seen]) ** 2).sum(1).mean()
            align = _info_nce(zs[seen], zc[seen], p.temperature) if int(seen.sum()) > 1 else zs.new_zeros(())
            dist = allocation_distortion(zs.detach(), zc.detach(), ps, pc, cnt[b], lam, kv)
            gate, smooth = gate_losses(net.gate, feats[b], grid, standardize(dist), kv, levels, p)
            loss = rec + ls + lc + p.align_weight * align + gate + smooth
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in (("loss", loss), ("rec", rec), ("quant", ls + lc), ("align", align), ("gate", gate), ("smooth", smooth)):
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(b) / n
        history.append({"epoch": ep, **{k: round(v, 5) for k, v in sums.items()}})
    net.eval()
    with torch.no_grad():  # the final distortions of every item, for the gate-only refinement
        zs_all, zc_all = net.enc_s(xs), net.enc_c(xc)
        raw = allocation_distortion(zs_all, zc_all, _rq(zs_all, net.cb_s, 0)[1], _rq(zc_all, net.cb_c, 0)[1], cnt, lam, kv)
        d_all = standardize(raw)
        cold, hot = cnt == 0, cnt >= torch.quantile(cnt, 0.8)
        diag = {"lambda": lam, **{f"mean_distortion_{g}": [round(float(v), 4) for v in raw[m].mean(0)] for g, m in (("cold", cold), ("head", hot), ("all", cnt >= 0)) if bool(m.any())}}
    gopt = torch.optim.Adam(net.gate.parameters(), lr=p.gate_lr)
    for _ in range(p.gate_steps):
        gate, smooth = gate_losses(net.gate, feats, grid, d_all, kv, levels, p)
        gopt.zero_grad()
        (gate + smooth).backward()
        gopt.step()
    if p.gate_steps:
        history.append({"gate_refine": p.gate_steps, "gate": round(float(gate.detach()), 5), "smooth": round(float(smooth.detach()), 5)})
    history.append(diag)
    with torch.no_grad():
        z_s, z_c = zs_all.cpu().numpy(), zc_all.cpu().numpy()
        probs = net.gate(feats).cpu().numpy()
        pg = net.gate(gate_grid).cpu().numpy()
    pick = np.unique(np.linspace(0, len(uniq) - 1, min(len(uniq), 12)).round().astype(int))
    curve = [{"count": int(uniq[j]), "expected_cf_tokens": float(pg[j] @ k_values), "argmax_cf_tokens": int(k_values[pg[j].argmax()])} for j in pick]
    return FlexCodeFit(z_s.astype(np.float32), z_c.astype(np.float32), probs, k_values, history, curve)


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


def _fit_view(r: np.ndarray, k: int, niter: int, seed: int, mppc: int) -> tuple[np.ndarray, np.ndarray]:
    from components.tokenizer.rq_kmeans import kmeans, nearest

    if k >= len(r):  # as many codes as points: each point is its own code
        return np.ascontiguousarray(r[:k], dtype=np.float32), np.arange(len(r), dtype=np.int32)
    cw = kmeans(r, k, niter, seed, mppc)
    return cw, nearest(r, cw)[1][:, 0].astype(np.int32)


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
    fit = train_flexcode(_l2(x), _l2(xc), counts, L, K, fp, seed, progress)
    cf_tokens = fit.k_values[fit.probs.argmax(1)].astype(np.int32)
    dual = dual_residual_codes(fit.z_s, fit.z_c, cf_tokens, L, K, p.niter, seed, p.max_points_per_centroid)
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
        "allocation": allocation_summary(cf_tokens, counts, L),
        "gate_curve": fit.gate_curve,
        "final_losses": [h for h in fit.history if "epoch" in h][-1:] + [h for h in fit.history if "epoch" not in h],
        "cf_tokens": cf_tokens.tolist(),
    }
    log.info("flexcode: mean CF tokens %.3f, %d raw collisions", cf_tokens.mean(), n_raw)
    return Codebook(sids=sids, sizes=sizes, item_ids=list(item_ids), method="flexcode", codewords=dict(enumerate(dual.codewords)), stats=stats, dataset_ref=dataset_ref)


def cf_tokens_of(codebook: Codebook) -> np.ndarray:
    """Per-item CF token count of a FlexCode codebook, recomputed from its SIDs and token split."""
    split = codebook.stats["flexcode"]["token_split"]
    L = len(split)
    is_cf = np.stack([codebook.sids[:, lvl] >= split[lvl]["semantic"] for lvl in range(L)], 1)
    return is_cf.sum(1).astype(np.int32)

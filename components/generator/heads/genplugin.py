"""GenPlugin (Yang et al., DASFAA'26) as a head on the TIGER backbone: dual encoders with a shared
decoder, contrastive semantics alignment, semantic-substitution guidance, retrieval-augmented
fine-tuning and inference.

**Views.** The *ID view* is the backbone: T5 encoder over the history's SID tokens, states
``C_u = {c_j^(r)}``. The *language view* encodes the same history from frozen item text
embeddings ``e_i`` (the ``item-embeddings`` artifact, a buffer) through a trainable 2-layer
projection ``ê_i = W2 GELU(W1 e_i)`` (+ a learned position embedding counted from the most recent
item) and a standard Transformer encoder (``torch.nn.TransformerEncoder``, pre-norm), states
``H_u = {h_j}``. Both views share the backbone's decoder and output layer.

**Contrastive alignment (DSA).** ``ℓ(u, v) = -mean_i log( exp(s(u_i, v_i)/τ) / Σ_j exp(s(u_i, v_j)/τ) )``
with in-batch negatives ``j`` (Eq. 1; ``s`` = inner product of L2-normalised vectors, i.e. cosine,
for a scale-free τ; other occurrences of the *same* item are not used as negatives; the paper's sum
is a mean here so λ does not depend on the batch size).
Item level (Eq. 2): ``L_item = ℓ(h_i, g_i) + ℓ(g_i, h_i)`` with ``g_i = Σ_r c_i^(r)`` the sum of the
item's ID-token states (at most ``item_sample`` items of the batch). User level (Eq. 3):
``L_user = ℓ(p_u, q_u) + ℓ(q_u, p_u)``, ``p_u`` / ``q_u`` the mean of ``H_u`` / of ``C_u`` over the
history's item positions.

**Semantic-substitution guidance (SSG).** The language view decodes the target with teacher
forcing (loss ``L_lan`` = CE). For the ID view, each sample keeps plain teacher forcing with
probability ``p1``; otherwise every ground-truth input token ``c_{t-1}`` (``t ≥ 1``; BOS is never
replaced) is replaced with probability ``1 - p2`` by ``Σ_{k∈top-q} softmax(z^lan_{t-1})_k emb(k)``:
the softmax over the language view's top-``q`` logits (restricted to level ``t-1``'s tokens) for that
token, weighting their embeddings (probabilities detached). Distribution alignment (Eq. 4-5):
``P(c) = softmax(z / φ)`` for both views, ``L_kl = mean_i Σ_l KL(P^lan‖P^id) + KL(P^id‖P^lan)``.
Substitution happens only in training (``teacher_inputs`` is a training hook).

**Total loss** (Eq. 6): ``L = L_id + λ_lan L_lan + λ1 L_item + λ2 L_user + λ3 L_kl``; ``L_id`` is the
model's ``rec`` loss.

**Retrieval augmentation (RAR, §3.3).** After pre-training, a second stage (``second_stage``, run by
``genrec train``) fine-tunes *the decoder* (paper: "fine-tunes the decoder of GenPlugin"; "we first
freeze the encoder to ensure that each user's representation remains consistent with its
pre-trained version") with the cached representations ``q_v`` (mean-pooled ID-encoder states,
computed in eval mode) of ``v`` similar users appended to the target user's encoder states as extra
cross-attention positions (``q_v + e_nbr``, a learned neighbour-type vector). The neighbours: BM25
top-``z`` ∪ faiss top-``z`` (:meth:`~components.retrieval.UserRetriever.candidates`) re-ranked by the
cosine between the ID-view representations ``q`` (Eq. 3) of the query and of each candidate, users
found by both paths always kept first (:func:`~components.retrieval.retriever.merge`). Trained in this stage: the T5
decoder stack (self/cross-attention, feed-forward, layer norms, relative position bias), an untied
output layer if the backbone has one, and the new ``e_nbr``. Frozen (:meth:`GenPluginHead.freeze_encoders`):
the ID encoder and the shared token-embedding table it reads (tied in TIGER to the decoder's input
embedding and the output layer, so those stay frozen with it — training them would move every
cached ``q_v``), the language encoder, its projection and position embeddings. Frozen modules run
in **eval mode** throughout the stage, so the target user is encoded exactly as its neighbours are
(no dropout), "the same operation as in re-ranking". The stage's losses are the ID view's CE plus,
when on, ``L_lan``, ``L_kl`` and the substitution (they reach the trainable decoder only); ``L_item``
/ ``L_user`` are off (their gradients would only reach frozen encoders). The stage's result is kept
only if it is not worse on valid NDCG@10 than the pre-trained one (else the pre-trained weights
are kept, with augmentation off); both figures are reported (``rar.valid.ndcg@10_before`` /
``_after``, ``rar.kept``).

*Neighbour sets.* The query user is excluded in training and at inference alike (the batch /
ranking extras carry each row's dataset user index, ``ctx.extras["user"]``): the index holds only
training interactions, so the only indexed history that holds a sample's target (its own future)
is its user's, and a user never retrieves itself. No other user is banned, so a sample gets the
same neighbours at fine-tuning as at ranking. Rows without a known user (a raw history from a
client) exclude no one.
A missing retrieval index makes the head run without augmentation: one warning and
``rar_fallback = True`` — never an exception. Neighbours obtained elsewhere come in as ``extras``
(:meth:`GenPluginHead.neighbor_extras`, at most ``v`` per row): the generator gRPC service asks the
retrieval service for this head's ``z`` and all ``2z`` candidates, and keeps ``v`` of them with the
same ID-view re-rank (:meth:`GenPluginHead.select_neighbors`).

Ablations: ``dsa: false`` (no L_item / L_user), ``ssg: false`` (no substitution, no L_kl),
``rar: false`` (no fine-tuning stage, no augmentation), and ``rar_paths: bm25`` / ``cf`` (RAR with one
retrieval path alone: only that path's top-``z`` is re-ranked; ``both`` = the paper).
"""

from __future__ import annotations

import logging
import types
import warnings
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from components.generator.heads.base import EXTRA_USER, Context, ForwardOutput, Head, register_head
from components.params import Section

log = logging.getLogger(__name__)

EXTRA_NBR_STATES = "genplugin.neighbor_states"  # [B, v, d] neighbour representations (given by a caller)
EXTRA_NBR_MASK = "genplugin.neighbor_mask"  # bool [B, v]
_EXTRA_LAN = "genplugin.lan"


class GenPluginError(ValueError):
    """Bad GenPlugin configuration or input (wrong embeddings, z/v out of range, foreign retrieval index)."""


class GenPluginParams(Section):
    """``generator.heads: [{type: genplugin, ...}]`` options."""

    type: str = Field("genplugin", description="head type (genplugin)")
    embeddings: str | None = Field(None, description="item-embeddings ref of the language view; null = the codebook's source embeddings, else item-embeddings/<dataset>@latest")
    retrieval_index: str | None = Field(None, description="retrieval-index ref for RAR; null = retrieval-index/<dataset>@latest (missing: no augmentation, flagged)")
    registry_root: str | None = Field(None, description="registry root the refs are read from (filled in by genrec train)")
    dataset: str | None = Field(None, description="dataset ref the retrieval index must come from (filled in by genrec train)")
    n_items: int | None = Field(None, ge=1, description="rows of the item-embedding table (filled in; restores a checkpoint)")
    text_dim: int | None = Field(None, ge=1, description="item-embedding dimension (filled in; restores a checkpoint)")
    dsa: bool = Field(True, description="dual-source contrastive alignment (L_item, L_user); false = ablation w/o DSA")
    ssg: bool = Field(True, description="semantic-substitution guidance + symmetric KL; false = ablation w/o SSG")
    rar: bool = Field(True, description="retrieval-augmented fine-tuning and inference; false = ablation w/o RAR")
    rar_paths: Literal["both", "bm25", "cf"] = Field("both", description="retrieval paths whose candidates RAR re-ranks: both "
                                                     "(the paper) | bm25 (content path alone) | cf (collaborative path alone)")
    lan_layers: int = Field(2, ge=1, description="language-view Transformer encoder layers")
    lan_heads: int = Field(4, ge=1, description="language-view attention heads (must divide d_model)")
    lan_ff: int = Field(256, ge=8, description="language-view feed-forward size")
    proj_hidden: int = Field(256, ge=8, description="hidden size of the 2-layer text projection")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="language-view dropout")
    max_positions: int = Field(256, ge=1, description="language-view position embeddings (history items)")
    tau: float = Field(0.1, gt=0, description="contrastive temperature τ (Eq. 1)")
    phi: float = Field(0.9, gt=0, description="KL sharpening temperature φ (Eq. 4)")
    p1: float = Field(0.5, ge=0, le=1, description="probability a sample keeps plain teacher forcing")
    p2: float = Field(0.8, ge=0, le=1, description="guided samples: probability a token is kept (replaced with 1 - p2)")
    q: int = Field(5, ge=1, description="top-q language-view tokens averaged into a substitute")
    lambda_lan: float = Field(1.0, ge=0, description="weight of the language view's decoder CE L_lan")
    lambda_item: float = Field(0.1, ge=0, description="λ1: item-level contrastive loss")
    lambda_user: float = Field(0.1, ge=0, description="λ2: user-level contrastive loss")
    lambda_kl: float = Field(0.1, ge=0, description="λ3: symmetric KL between the views")
    item_sample: int = Field(1024, ge=2, description="most history items per batch in L_item (random subset)")
    z: int = Field(20, ge=1, description="retrieval candidates per path")
    v: int = Field(5, ge=1, description="neighbours appended to the decoder context")
    finetune_epochs: int = Field(3, ge=0, description="RAR fine-tuning epochs after pre-training (0 = none)")
    finetune_lr: float | None = Field(None, gt=0, description="fine-tuning learning rate; null = generator.train.lr")
    rar_active: bool = Field(False, description="set by the fine-tuning stage: augment at inference (stored in checkpoints)")


# options only the RAR stage (second_stage, augmentation at inference) reads
RAR_ONLY = {"rar", "rar_paths", "z", "v", "finetune_epochs", "finetune_lr", "retrieval_index", "rar_active"}


def _info_nce(u: torch.Tensor, v: torch.Tensor, tau: float, same: torch.Tensor | None = None) -> torch.Tensor:
    """``ℓ(u, v)``: mean over rows of ``-log softmax_j(cos(u_i, v_j)/τ)[i]``; ``same[i, j]`` True removes
    ``j ≠ i`` from the negatives (same item)."""
    logits = F.normalize(u.float(), dim=-1) @ F.normalize(v.float(), dim=-1).T / tau
    if same is not None:
        off = same & ~torch.eye(len(u), dtype=torch.bool, device=u.device)
        logits = logits.masked_fill(off, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(u), device=u.device))


def symmetric_kl(z_a: torch.Tensor, z_b: torch.Tensor, phi: float) -> torch.Tensor:
    """Eq. 4-5: ``mean_i Σ_l KL(P_a‖P_b) + KL(P_b‖P_a)`` with ``P = softmax(z/φ)``; logits [B, L, V]."""
    la = F.log_softmax(z_a.float() / phi, dim=-1)
    lb = F.log_softmax(z_b.float() / phi, dim=-1)
    kl_ab = (la.exp() * (la - lb)).sum(-1)
    kl_ba = (lb.exp() * (lb - la)).sum(-1)
    return (kl_ab + kl_ba).sum(-1).mean()


@register_head
class GenPluginHead(Head):
    name = "genplugin"
    supports = ("tiger",)

    def __init__(self, d_model: int, **cfg: Any):
        super().__init__()
        self.p = GenPluginParams.model_validate({"type": "genplugin", **cfg})
        p = self.p
        if d_model % p.lan_heads:
            raise GenPluginError(f"genplugin: lan_heads ({p.lan_heads}) must divide d_model ({d_model})")
        if p.n_items is None or p.text_dim is None:
            if not p.embeddings:
                raise GenPluginError("genplugin needs item embeddings: give `embeddings` (an item-embeddings ref) "
                                     "or n_items and text_dim (a checkpoint)")
            emb = self._load_embeddings(p)
            p.n_items, p.text_dim = int(emb.shape[0]), int(emb.shape[1])
            table = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
        else:
            table = torch.zeros(p.n_items, p.text_dim)
        self.d_model = d_model
        self.register_buffer("item_text", table)  # frozen sentence-encoder output (persistent: saved in checkpoints)
        self.proj = nn.Sequential(nn.Linear(p.text_dim, p.proj_hidden), nn.GELU(), nn.Linear(p.proj_hidden, d_model))
        self.pos = nn.Embedding(p.max_positions, d_model)
        layer = nn.TransformerEncoderLayer(d_model, p.lan_heads, p.lan_ff, p.dropout, activation="gelu", batch_first=True, norm_first=True)
        self.lan_encoder = nn.TransformerEncoder(layer, p.lan_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.nbr_type = nn.Parameter(torch.zeros(d_model))
        self._retriever = None
        self._retriever_tried = False
        self.rar_fallback = False  # True once RAR was wanted but no retrieval index could be used
        self._nbr_cache: dict[tuple, list[int]] = {}  # (history, excluded user) -> neighbours, valid for _nbr_ref
        self._nbr_ref: str | None = None
        self._frozen: list[tuple[nn.Parameter, bool]] = []  # (parameter, its requires_grad before the RAR stage)
        self._pinned: list[nn.Module] = []  # modules held in eval mode during the RAR stage
        from components.retrieval.retriever import RepresentationCache

        self.rep_cache = RepresentationCache()
        self.model_ref: str = f"local:{id(self)}"  # RepresentationCache key; a checkpoint ref once loaded

    # ---- config / checkpoint ------------------------------------------------------------------
    @staticmethod
    def _load_embeddings(p: GenPluginParams) -> np.ndarray:
        from components.registry import Registry
        from components.tokenizer.encoders import load_embeddings

        art = Registry(p.registry_root).load(p.embeddings)
        return load_embeddings(art)

    def config(self) -> dict[str, Any]:
        return self.p.model_dump(mode="json")

    def first_stage_config(self) -> dict[str, Any]:
        """Pre-training (DSA, SSG) reads none of the RAR options: variants that differ only in them
        (w/o RAR, one retrieval path, z, v, the fine-tuning schedule, the index) share a pre-training."""
        return self.p.model_dump(mode="json", exclude=RAR_ONLY)

    def attach(self, model: nn.Module) -> None:
        super().attach(model)
        if self.p.n_items != model.vocab.n_items:
            raise GenPluginError(f"genplugin: the item-embedding table has {self.p.n_items} rows but the codebook has "
                                 f"{model.vocab.n_items} items (embeddings {self.p.embeddings!r} come from another dataset)")

    @classmethod
    def resolve(cls, cfg: dict[str, Any], registry, dataset_ref: str, codebook_ref: str, dataset_name: str) -> dict[str, Any]:
        """Fill in the refs at ``genrec train`` time: embeddings (explicit > the codebook's ancestor
        item-embeddings > ``item-embeddings/<dataset>@latest``, checked against the dataset version),
        the retrieval index (explicit > ``retrieval-index/<dataset>@latest`` when it exists), the
        registry root and the dataset ref."""
        from components.registry import ArtifactNotFound
        from components.tokenizer.encoders import load_embeddings

        p = GenPluginParams.model_validate(cfg)
        ref = p.embeddings
        if ref is None:
            ref = _ancestor(registry, codebook_ref, "item-embeddings") or f"item-embeddings/{dataset_name}@latest"
        art = registry.load(ref)
        load_embeddings(art, dataset_ref=dataset_ref)  # refuses embeddings of another dataset version
        out = p.model_copy(update={"embeddings": art.ref, "registry_root": str(registry.root), "dataset": dataset_ref})
        if p.rar and p.retrieval_index is None:
            try:
                out.retrieval_index = registry.load(f"retrieval-index/{dataset_name}@latest").ref
            except ArtifactNotFound:
                warnings.warn(f"genplugin: no retrieval-index/{dataset_name} (run `genrec retrieval build`): "
                              "training without retrieval augmentation", stacklevel=2)
        return out.model_dump(mode="json")

    # ---- language view ------------------------------------------------------------------------
    def language_states(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``H_u`` [B, N, d] and its mask [B, N] from right-aligned item indices [B, N] (-1 = pad).
        Rows without items keep their last position unmasked (no NaN); their mask row is all False."""
        valid = items >= 0
        x = self.proj(self.item_text[items.clamp(min=0)])
        N = items.shape[1]
        pos = (N - 1 - torch.arange(N, device=items.device)).clamp(max=self.p.max_positions - 1)
        x = x + self.pos(pos)[None]
        attn_ok = valid.clone()
        attn_ok[:, -1] |= ~valid.any(1)
        h = self.lan_encoder(x, src_key_padding_mask=~attn_ok)
        return h, valid

    def _decode_teacher(self, states: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher-forced shared-decoder pass over another context; logits [B, L, V]."""
        from components.generator.vocab import BOS

        m = self.model
        B, L = targets.shape
        prev = torch.cat([torch.full((B, 1), BOS, dtype=torch.long, device=targets.device), targets[:, :-1]], dim=1)
        tok = m.backbone.embed(prev)
        dec = torch.cat([m._segment(t, tok[:, t : t + 1]) for t in range(L)], dim=1)
        lvl = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
        ctx = Context(states, mask, lvl, lvl, states)
        hidden, _ = m.backbone.decode(ctx, dec, None, None)
        return m.backbone.logits(hidden[:, m.layout.readout.to(hidden.device)])

    def _language_pass(self, ctx: Context, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if _EXTRA_LAN in ctx.extras:
            return ctx.extras[_EXTRA_LAN]
        h, valid = self.language_states(ctx.extras["items"])
        dmask = valid.clone()
        dmask[:, -1] |= ~valid.any(1)
        logits = self._decode_teacher(h, dmask, targets)
        out = {"h": h, "valid": valid, "logits": logits}
        ctx.extras[_EXTRA_LAN] = out
        return out

    # ---- SSG: semantic substitution (training only) -------------------------------------------
    def substitutes(self, lan_logits: torch.Tensor) -> torch.Tensor:
        """Substitute input vectors for ``c_0..c_{L-2}`` [B, L-1, d]: softmax over the top-``q``
        language-view logits of each level (restricted to that level's tokens) weighting their embeddings."""
        m = self.model
        vocab = m.vocab
        L = lan_logits.shape[1]
        outs = []
        for t in range(L - 1):
            lo, hi = vocab.level_range(t)
            z = lan_logits[:, t, lo:hi].detach().float()
            k = min(self.p.q, hi - lo)
            val, idx = z.topk(k, dim=-1)
            w = torch.softmax(val, dim=-1)
            emb = m.backbone.embed(idx + lo)  # [B, k, d]
            outs.append((w[..., None].to(emb.dtype) * emb).sum(1))
        return torch.stack(outs, dim=1)

    def teacher_inputs(self, embeds: torch.Tensor, targets: torch.Tensor, ctx: Context) -> torch.Tensor:
        if not self.training:
            return embeds
        lan = self._language_pass(ctx, targets)
        if not self.p.ssg or embeds.shape[1] < 2:
            return embeds
        B, L = targets.shape
        dev = embeds.device
        guided = torch.rand(B, device=dev) >= self.p.p1
        replace = guided[:, None] & (torch.rand(B, L, device=dev) >= self.p.p2)
        replace[:, 0] = False  # BOS is never replaced
        if not replace.any():
            return embeds
        sub = torch.cat([embeds[:, :1], self.substitutes(lan["logits"]).to(embeds.dtype)], dim=1)
        return torch.where(replace[..., None], sub, embeds)

    # ---- losses ---------------------------------------------------------------------------------
    def losses(self, out: ForwardOutput) -> dict[str, torch.Tensor]:
        if not self.training:
            return {}
        ctx = out.ctx
        lan = self._language_pass(ctx, out.targets)
        res: dict[str, torch.Tensor] = {}
        if self.p.lambda_lan > 0:
            ce = F.cross_entropy(lan["logits"].float().reshape(-1, lan["logits"].shape[-1]), out.targets.reshape(-1))
            res["lan"] = self.p.lambda_lan * ce
        if self.p.ssg and self.p.lambda_kl > 0:
            res["kl"] = self.p.lambda_kl * symmetric_kl(lan["logits"], out.logits, self.p.phi)
        if self.p.dsa and not self.p.rar_active:
            item, user = self.alignment_losses(ctx, lan["h"], lan["valid"])
            res["item"] = self.p.lambda_item * item
            res["user"] = self.p.lambda_user * user
        return res

    def alignment_losses(self, ctx: Context, h: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_item, L_user) of Eq. 2-3 from the ID states ``ctx.states`` and language states ``h``."""
        items = ctx.extras["items"]
        B, N = items.shape
        S = ctx.slots.shape[1]
        states = ctx.states[:, :S]
        slots = ctx.slots
        onehot = F.one_hot(slots.clamp(min=0), N).to(states.dtype) * (slots >= 0)[..., None].to(states.dtype)  # [B, S, N]
        g = torch.einsum("bsn,bsd->bnd", onehot, states)  # Σ_r c_j^(r)
        hv, gv, ids = h[valid], g[valid], items[valid]
        if hv.shape[0] > self.p.item_sample:
            sel = torch.randperm(hv.shape[0], device=hv.device)[: self.p.item_sample]
            hv, gv, ids = hv[sel], gv[sel], ids[sel]
        same = ids[:, None] == ids[None, :]
        l_item = _info_nce(hv, gv, self.p.tau, same) + _info_nce(gv, hv, self.p.tau, same)
        has = valid.any(1)
        p_u = (h * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        q_u = self.user_representation(ctx)
        p_u, q_u = p_u[has], q_u[has]
        l_user = _info_nce(p_u, q_u, self.p.tau) + _info_nce(q_u, p_u, self.p.tau) if p_u.shape[0] > 1 else p_u.sum() * 0
        return l_item, l_user

    @staticmethod
    def user_representation(ctx: Context) -> torch.Tensor:
        """``q_u``: mean of the ID-encoder states over the history's item-token positions [B, d]."""
        S = ctx.levels.shape[1]
        m = (ctx.levels >= 0).to(ctx.states.dtype)[..., None]
        return (ctx.states[:, :S] * m).sum(1) / m.sum(1).clamp(min=1)

    # ---- RAR: retrieval augmentation ------------------------------------------------------------
    def set_retriever(self, retriever) -> None:
        """Use this :class:`~components.retrieval.UserRetriever` (checks catalog and z/v ranges)."""
        if retriever is not None:
            if len(retriever.item_vectors) != self.p.n_items:
                raise GenPluginError(f"retrieval index covers {len(retriever.item_vectors)} items, the model {self.p.n_items}")
            if self.p.dataset and retriever.dataset_ref and retriever.dataset_ref != self.p.dataset:
                raise GenPluginError(f"retrieval index was built from {retriever.dataset_ref}, the model trained on {self.p.dataset}")
            if self.p.z >= retriever.n_users or self.p.v >= retriever.n_users:
                raise GenPluginError(f"genplugin z={self.p.z} and v={self.p.v} must be smaller than the {retriever.n_users} indexed users")
        self._retriever = retriever
        self._retriever_tried = True
        self._nbr_cache.clear()
        if retriever is not None:
            self.rar_fallback = False

    def retriever(self):
        """The retriever, loaded once from ``retrieval_index``; None (with ``rar_fallback`` set and one
        warning) when there is none. A foreign index (other dataset) raises :class:`GenPluginError`."""
        if not self._retriever_tried:
            self._retriever_tried = True
            from components.registry import ArtifactError, Registry
            from components.retrieval.retriever import UserRetriever

            if not self.p.retrieval_index:
                self._fallback("no retrieval index configured")
            else:
                try:
                    art = Registry(self.p.registry_root).load(self.p.retrieval_index)
                except (ArtifactError, OSError) as e:
                    self._fallback(f"retrieval index {self.p.retrieval_index} unavailable ({e})")
                else:
                    self.set_retriever(UserRetriever.from_artifact(art))
        return self._retriever

    def _fallback(self, why: str) -> None:
        self.rar_fallback = True
        warnings.warn(f"genplugin: {why}; decoding WITHOUT retrieval augmentation (rar_fallback=True)", RuntimeWarning, stacklevel=3)

    @torch.no_grad()
    def neighbor_representations(self, histories: Sequence[Sequence[int]], keys: Sequence[Any] | None = None,
                                 model_ref: str | None = None) -> torch.Tensor:
        """``q_v`` [n, d] of users given by their histories (item indices, oldest first), computed by
        the frozen ID encoder in eval mode and cached in :attr:`rep_cache` under ``(model_ref, key)``
        (key defaults to the history). This is the hook a service uses for neighbours it got over gRPC."""
        m = self.model
        ref = model_ref or self.model_ref
        keys = list(keys) if keys is not None else [("h",) + tuple(int(i) for i in h) for h in histories]
        if len(keys) != len(histories):
            raise GenPluginError(f"{len(keys)} keys for {len(histories)} histories")
        if any(len(h) == 0 for h in histories):
            raise GenPluginError("a neighbour has an empty history")
        rows = self.rep_cache.get_many(ref, keys, lambda pos: self._encode_users([histories[i] for i in pos]))
        return torch.from_numpy(np.stack(rows)).to(m.device)

    @torch.no_grad()
    def _encode_users(self, histories: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """``q`` (Eq. 3) of each history by the ID encoder in eval mode (restored afterwards)."""
        m = self.model
        enc = m.backbone.t5.get_encoder() if hasattr(m.backbone, "t5") else None
        was = enc.training if enc is not None else False
        if enc is not None:
            enc.eval()
        out: list[np.ndarray] = []
        try:
            for s in range(0, len(histories), 256):  # fp32 always: the same q under bf16 training and at inference
                hist = m.encode_history([list(h) for h in histories[s : s + 256]])
                with torch.autocast(m.device.type, enabled=False):
                    ctx = m.backbone.encode(m.backbone.make_context(hist))
                out += list(self.user_representation(ctx).float().cpu().numpy())
        finally:
            if enc is not None:
                enc.train(was)
        return out

    def neighbor_extras(self, neighbor_histories: Sequence[Sequence[Sequence[int]]], model_ref: str | None = None) -> dict[str, torch.Tensor]:
        """``extras`` for :func:`constrained_beam_search` / ``model.begin`` from each request's
        neighbours' histories (as returned by a retrieval service): [B, v, d] states and [B, v] mask.
        At most this head's ``v`` neighbours per row are used (the first ``v``; pick them with
        :meth:`select_neighbors` when there are more candidates)."""
        neighbor_histories = [list(nb)[: self.p.v] for nb in neighbor_histories]
        B = len(neighbor_histories)
        v = max([len(n) for n in neighbor_histories] + [1])
        states = torch.zeros(B, v, self.d_model, device=self.model.device)
        mask = torch.zeros(B, v, dtype=torch.bool, device=self.model.device)
        flat = [(b, j, h) for b, nb in enumerate(neighbor_histories) for j, h in enumerate(nb) if len(h)]
        if flat:
            reps = self.neighbor_representations([h for _, _, h in flat], model_ref=model_ref)
            for (b, j, _), r in zip(flat, reps):
                states[b, j] = r
                mask[b, j] = True
        return {EXTRA_NBR_STATES: states, EXTRA_NBR_MASK: mask}

    def user_indices(self, user_ids: Sequence[str | None]) -> list[int]:
        """Indices in this head's retrieval index of external user ids (-1: unknown, None, or no index)."""
        r = self.retriever()
        if r is None:
            return [-1] * len(user_ids)
        return [r.user_index.get(u, -1) if u else -1 for u in user_ids]

    def retrieve(self, items: torch.Tensor, users: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Neighbour representations [B, v, d] and mask [B, v] for right-aligned history rows;
        ``users[b]`` (index in the retrieval index, -1 = unknown) is excluded from row ``b``'s neighbours."""
        r = self.retriever()
        B = items.shape[0]
        v = self.p.v
        states = torch.zeros(B, v, self.d_model, device=items.device)
        mask = torch.zeros(B, v, dtype=torch.bool, device=items.device)
        if r is None:
            return states, mask
        if self._nbr_ref != self.model_ref:  # neighbour lists depend on the model (ID-view re-rank)
            self._nbr_cache.clear()
            self._nbr_ref = self.model_ref
        rows = [[i for i in row if i >= 0] for row in items.tolist()]
        keys = [(tuple(h), None if users is None or int(users[b]) < 0 else int(users[b])) for b, h in enumerate(rows)]
        todo = [b for b, h in enumerate(rows) if h and keys[b] not in self._nbr_cache]
        if todo:
            if len(self._nbr_cache) > 200_000:
                self._nbr_cache.clear()
            queries = self._encode_users([rows[b] for b in todo])  # q_u of the query rows (Eq. 3)
            found = [self._paths(a, c) for a, c in r.candidates_batch([rows[b] for b in todo], z=self.p.z,
                                                                      exclude_users=[keys[b][1] for b in todo])]
            pool = sorted({int(u) for a, c in found for u in np.concatenate([a, c])})
            if pool:  # every candidate's q_v in one encoder batch (the cache then serves each row's re-rank)
                self.neighbor_representations([r.train_histories[u][-self.model.max_items :] for u in pool], keys=[("u", u) for u in pool])
            for b, q, (a, c) in zip(todo, queries, found):
                self._nbr_cache[keys[b]] = self._rerank(r, a, c, q)
        want: list[tuple[int, int, int]] = []
        for b, hist in enumerate(rows):
            if hist:
                want += [(b, j, u) for j, u in enumerate(self._nbr_cache[keys[b]])]
        if want:
            users = [u for _, _, u in want]
            hists = [r.train_histories[u][-self.model.max_items :] for u in users]
            reps = self.neighbor_representations(hists, keys=[("u", u) for u in users])
            bi = torch.tensor([b for b, _, _ in want], device=items.device)
            ji = torch.tensor([j for _, j, _ in want], device=items.device)
            states[bi, ji] = reps.to(states.dtype)
            mask[bi, ji] = True
        return states, mask

    def _rerank(self, r, a: np.ndarray, c: np.ndarray, q: np.ndarray) -> list[int]:
        """§3.3: BM25 top-z ``a`` ∪ faiss top-z ``c`` (the query user excluded), re-ranked by the
        cosine between the ID-view representations ``q`` (Eq. 3) of the query and of each candidate;
        users found by both paths are always kept (first); ``v`` users."""
        from components.retrieval.retriever import merge, union

        a, c = self._paths(a, c)
        cands = union(a, c)
        if cands.size == 0:
            return []
        reps = self.neighbor_representations([r.train_histories[u][-self.model.max_items :] for u in cands.tolist()],
                                             keys=[("u", u) for u in cands.tolist()]).float().cpu().numpy()
        return [n.user for n in merge(a, c, _cosine(reps, q), self.p.v)]

    def _paths(self, a: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The BM25 (``a``) and faiss (``c``) candidates this head re-ranks (``rar_paths``)."""
        empty = np.zeros(0, dtype=np.int64)
        if self.p.rar_paths == "bm25":
            return np.asarray(a, dtype=np.int64), empty
        if self.p.rar_paths == "cf":
            return empty, np.asarray(c, dtype=np.int64)
        return a, c

    def select_neighbors(self, history: Sequence[int], candidates: Sequence[tuple[Sequence[int], str]],
                         model_ref: str | None = None) -> list[int]:
        """The same re-rank for candidates a retrieval service returned (``(history, path)`` with
        path ``bm25`` / ``cf`` / ``both``): positions of the ``v`` chosen ones, best first."""
        from components.retrieval.retriever import merge, union

        live = [k for k, (h, _) in enumerate(candidates) if len(h)]
        if not live or not len(history):
            return live[: self.p.v]
        a = np.array([k for k in live if candidates[k][1] != "cf"], dtype=np.int64)  # bm25, both (or unlabelled)
        c = np.array([k for k in live if candidates[k][1] in ("cf", "both")], dtype=np.int64)
        a, c = self._paths(a, c)
        cands = union(a, c)
        if cands.size == 0:
            return []
        reps = self.neighbor_representations([candidates[k][0] for k in cands.tolist()], model_ref=model_ref).float().cpu().numpy()
        q = self._encode_users([list(history)[-self.model.max_items :]])[0]
        return [n.user for n in merge(a, c, _cosine(reps, q), self.p.v)]

    def context_states(self, ctx: Context) -> Context:
        if not (self.p.rar and self.p.rar_active):
            return ctx
        if EXTRA_NBR_STATES in ctx.extras:
            nst = ctx.extras[EXTRA_NBR_STATES].to(ctx.states.device, ctx.states.dtype)
            nmask = ctx.extras.get(EXTRA_NBR_MASK, torch.ones(nst.shape[:2], dtype=torch.bool, device=nst.device)).bool()
        else:
            users = ctx.extras.get(EXTRA_USER)
            users = users.tolist() if isinstance(users, torch.Tensor) else users
            nst, nmask = self.retrieve(ctx.extras["items"], users)
            if not nmask.any():
                return ctx
        B, v = nmask.shape
        fill = torch.full((B, v), -1, dtype=ctx.levels.dtype, device=ctx.levels.device)
        nst = nst.to(ctx.states.dtype) + self.nbr_type.to(ctx.states.dtype)
        return ctx.replace(embeds=torch.cat([ctx.embeds, nst.to(ctx.embeds.dtype)], 1), mask=torch.cat([ctx.mask, nmask], 1),
                           levels=torch.cat([ctx.levels, fill], 1), slots=torch.cat([ctx.slots, fill], 1),
                           states=torch.cat([ctx.states, nst], 1))

    # ---- second training stage ------------------------------------------------------------------
    def freeze_encoders(self) -> list[str]:
        """Freeze what the RAR stage must not change (§3.3: the encoders, so cached ``q_v`` stay valid):
        the ID encoder, the shared token embeddings it reads (in TIGER also the decoder's input
        embedding and, tied, the output layer), the language encoder, its projection and position
        embeddings. The frozen modules are held in eval mode (``model.train()`` leaves them in eval)
        until :meth:`unfreeze_encoders`. Returns the frozen parameter names."""
        m = self.model
        own = [f"heads.{i}." for i, h in enumerate(m.heads) if h is self]
        parts = tuple(o + part for o in own for part in ("proj.", "pos.", "lan_encoder."))
        frozen = []
        for name, prm in m.named_parameters():
            if name.startswith(("backbone.t5.encoder.", "backbone.t5.shared.") + parts):
                self._frozen.append((prm, prm.requires_grad))
                prm.requires_grad_(False)
                frozen.append(name)
        mods = [self.proj, self.lan_encoder]
        if hasattr(m.backbone, "t5"):
            mods.insert(0, m.backbone.t5.get_encoder())
        for mod in mods:
            mod.train = types.MethodType(_eval_only, mod)  # instance attribute: every train(mode) call → eval
            mod.train(False)
            self._pinned.append(mod)
        return frozen

    def unfreeze_encoders(self) -> None:
        """Undo :meth:`freeze_encoders` (requires_grad as before; train()/eval() behave normally again)."""
        for prm, req in self._frozen:
            prm.requires_grad_(req)
        for mod in self._pinned:
            mod.__dict__.pop("train", None)
            mod.train(self.training)
        self._frozen, self._pinned = [], []

    def second_stage(self, result, make_trainer: Callable, train_params) -> Any:
        """RAR fine-tuning after pre-training: load the best pre-training state, freeze the encoders
        (:meth:`freeze_encoders`), switch augmentation on and train ``finetune_epochs`` more epochs
        (``make_trainer(params, tag)`` returns a Trainer over the same model). The history is the
        concatenation of both stages. The fine-tuned weights are kept when their valid NDCG@10 is at
        least the pre-trained one's; otherwise the pre-trained weights are restored and augmentation
        is switched off again (``rar.kept = "pretrain"``). ``extra`` reports both figures
        (``rar.valid.ndcg@10_before`` / ``rar.valid.ndcg@10_after``) and ``rar.kept``. Without a
        usable retrieval index, returns ``result`` unchanged (flagged)."""
        p = self.p
        if not p.rar or p.finetune_epochs == 0:
            return result
        if self.retriever() is None:
            result.extra["genplugin.rar_fallback"] = True
            return result
        m = self.model
        m.load_state_dict(result.best_state)
        pre_ref = self.model_ref
        self.freeze_encoders()
        p.rar_active = True
        self.model_ref = f"finetune:{id(self)}"
        tp = train_params.model_copy(update={"epochs": p.finetune_epochs, "lr": p.finetune_lr or train_params.lr,
                                             "warmup_steps": min(train_params.warmup_steps, 10)})
        try:
            res2 = make_trainer(tp, "rar").fit()
        finally:
            self.unfreeze_encoders()
        before = result.best_valid.get("ndcg@10")
        after = res2.best_valid.get("ndcg@10")
        keep = after is not None and (before is None or after >= before)
        history = [{**r, "stage": "pretrain"} for r in result.history] + [{**r, "stage": "rar"} for r in res2.history]
        info = {"genplugin.pretrain_valid": result.best_valid, "genplugin.pretrain_best_epoch": result.best_epoch,
                "genplugin.rar_fallback": self.rar_fallback, "rar.valid.ndcg@10_before": before,
                "rar.valid.ndcg@10_after": after, "rar.kept": "rar" if keep else "pretrain"}
        if keep:
            res2.history = history
            res2.extra.update(info)
            return res2
        log.warning("genplugin: RAR fine-tuning lowered valid NDCG@10 (%s -> %s): keeping the pre-trained weights, "
                    "augmentation off", before, after)
        m.load_state_dict(result.best_state)
        p.rar_active = False
        self.model_ref = pre_ref
        self._nbr_cache.clear()
        result.history = history
        result.extra.update(info)
        return result


def _cosine(reps: np.ndarray, q: np.ndarray) -> np.ndarray:
    reps = reps / np.maximum(np.linalg.norm(reps, axis=1, keepdims=True), 1e-12)
    return reps @ (q / max(float(np.linalg.norm(q)), 1e-12))


def _eval_only(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train`` of a module frozen for the RAR stage: always eval mode (no dropout)."""
    return nn.Module.train(self, False)


def _ancestor(registry, ref: str, kind: str, depth: int = 4) -> str | None:
    """The nearest ancestor of ``ref`` of the given kind (breadth-first over manifest parents)."""
    frontier, seen = [ref], set()
    for _ in range(depth):
        nxt = []
        for r in frontier:
            if r in seen:
                continue
            seen.add(r)
            try:
                art = registry.load(r)
            except Exception:  # noqa: BLE001 - a missing ancestor just ends the walk
                continue
            for par in art.manifest.parents:
                if par.startswith(kind + "/"):
                    return par
                nxt.append(par)
        frontier = nxt
    return None


__all__ = ["GenPluginHead", "GenPluginParams", "GenPluginError", "symmetric_kl", "EXTRA_NBR_STATES", "EXTRA_NBR_MASK"]

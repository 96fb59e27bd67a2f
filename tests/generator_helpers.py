"""Shared builders for generator tests: tiny random codebooks, tiny backbones, a probe head."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from components.generator.backbones.decoder_lm import DecoderLMBackbone
from components.generator.backbones.tiger import TigerBackbone
from components.generator.heads.base import Context, Head, Layout, register_head
from components.generator.model import GenerativeRecommender
from components.generator.vocab import SIDVocab


def random_sids(sizes, n, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    allsids = np.array(list(itertools.product(*[range(s) for s in sizes])))
    return allsids[np.sort(rng.choice(len(allsids), n, replace=False))]


def tiny_backbone(kind: str, vocab: SIDVocab):
    if kind == "tiger":
        return TigerBackbone(vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, dropout=0.0)
    return DecoderLMBackbone(vocab, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1)


@register_head
class ProbeHead(Head):
    """Exercises every hook: ``n_query`` learnable queries before each token, a progressive context
    mask (queries of step t see SID levels <= t of history items), a diversity loss (mean pairwise
    cosine of the queries' outputs), an optional teacher-input substitution, an extra context state
    (TIGER) and a logit bias. Counts calls per hook in ``self.calls``."""

    name = "probe"

    def __init__(self, d_model: int, n_query: int = 2, progressive: bool = True, substitute: bool = False,
                 extra_state: bool = False, logit_bias: float = 0.0):
        super().__init__()
        self.n_query, self.progressive, self.substitute = n_query, progressive, substitute
        self.extra_state, self.logit_bias = extra_state, logit_bias
        self.queries = nn.Parameter(torch.randn(8, n_query, d_model) * 0.5)
        self.state_vec = nn.Parameter(torch.randn(d_model) * 0.5)
        self.calls: dict[str, int] = {}

    def _hit(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def n_step_inputs(self, step):
        return self.n_query

    def step_inputs(self, step, batch_size):
        self._hit("step_inputs")
        return self.queries[step][None].expand(batch_size, -1, -1)

    def context_inputs(self, ctx: Context) -> Context:
        self._hit("context_inputs")
        return ctx

    def context_states(self, ctx: Context) -> Context:
        self._hit("context_states")
        if not self.extra_state:
            return ctx
        B = ctx.states.shape[0]
        one = lambda v, dt: torch.full((B, 1), v, dtype=dt, device=ctx.mask.device)  # noqa: E731
        return ctx.replace(states=torch.cat([ctx.states, self.state_vec.expand(B, 1, -1)], 1),
                           mask=torch.cat([ctx.mask, one(True, torch.bool)], 1),
                           levels=torch.cat([ctx.levels, one(-1, torch.long)], 1), slots=torch.cat([ctx.slots, one(-1, torch.long)], 1))

    def context_mask(self, ctx: Context, layout: Layout):
        self._hit("context_mask")
        if not self.progressive:
            return None
        lv = ctx.levels.shape[1]
        step = layout.pos_step.to(ctx.levels.device)
        is_query = (layout.pos_owner >= 0).to(ctx.levels.device)
        allowed = (ctx.levels[:, None, :] <= step[None, :, None]) | (ctx.levels[:, None, :] < 0)
        return torch.where(is_query[None, :, None], allowed, torch.ones_like(allowed))[:, :, :lv]

    def teacher_inputs(self, embeds, targets, ctx):
        self._hit("teacher_inputs")
        return embeds * 0.5 if self.substitute else embeds

    def losses(self, out):
        self._hit("losses")
        q = out.hidden[:, out.layout.pos_owner.to(out.hidden.device) >= 0]  # [B, Nq, d]
        q = torch.nn.functional.normalize(q, dim=-1)
        sim = q @ q.transpose(1, 2)
        n = sim.shape[1]
        return {"div": (sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(1)).mean() / (n * n - n)}

    def adjust_logits(self, step, logits, ctx):
        self._hit("adjust_logits")
        return logits + self.logit_bias

    def config(self):
        return {"type": self.name, "n_query": self.n_query, "progressive": self.progressive, "substitute": self.substitute,
                "extra_state": self.extra_state, "logit_bias": self.logit_bias}


def tiny_model(kind: str, sids, sizes, heads=(), seed=0, max_items=4) -> GenerativeRecommender:
    torch.manual_seed(seed)
    vocab = SIDVocab(sids, sizes)
    bb = tiny_backbone(kind, vocab)
    heads = [h(bb.d_model) if isinstance(h, type) else h for h in heads]
    return GenerativeRecommender(bb, heads, max_items=max_items).eval()


def exhaustive_topk(model: GenerativeRecommender, histories, k: int):
    """Score every item for every history by teacher forcing; top-k (indices, scores)."""
    n = model.vocab.n_items
    B = len(histories)
    hh = model.encode_history([r for r in histories for _ in range(n)])
    tg = model.vocab.item_tokens.to(model.device).repeat(B, 1)
    sc = model.score_sids(hh, tg).view(B, n)
    return sc.topk(k, dim=1)


@torch.no_grad()
def naive_beam_search(model: GenerativeRecommender, history, trie, beam: int, k: int):
    """Reference beam search: Python loops over beams, every prefix decoded from scratch."""
    vocab = model.vocab
    beams = [((), 0.0)]
    for t in range(vocab.n_levels):
        cands = []
        for prefix, score in beams:
            state = model.begin(model.encode_history([history]))
            prev = torch.tensor([1])
            for s in range(t + 1):
                logits = model.step(state, s, prev)
                if s < t:
                    prev = torch.tensor([vocab.offsets[s] + prefix[s]])
            lp = torch.log_softmax(logits.float(), -1)[0]
            node = 0
            for s, tok in enumerate(prefix):
                node = int(trie.child[s][node, tok])
            lo, _ = vocab.level_range(t)
            for tok in torch.nonzero(trie.valid[t][node]).flatten().tolist():
                cands.append((prefix + (tok,), score + float(lp[lo + tok])))
        cands.sort(key=lambda c: -c[1])
        beams = cands[:beam]
    items = trie.items_of(torch.tensor([b[0] for b in beams[:k]]))
    return items.tolist(), [b[1] for b in beams[:k]]


def synthetic_dataset(n_items: int = 24, n_users: int = 48, seq_len: int = 8, max_history: int = 4, seed: int = 0):
    """Users walk the catalog: item i is followed by i+1 (mod n). Leave-one-out splits."""
    from components.data.dataset import Dataset, Split

    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        s = int(rng.integers(n_items))
        seqs.append([(s + j) % n_items for j in range(seq_len)])
    rows = {"train": ([], [], []), "valid": ([], [], []), "test": ([], [], [])}
    for u, seq in enumerate(seqs):
        for t in range(1, len(seq) - 2):
            rows["train"][0].append(u), rows["train"][1].append(seq[:t]), rows["train"][2].append(seq[t])
        rows["valid"][0].append(u), rows["valid"][1].append(seq[: len(seq) - 2]), rows["valid"][2].append(seq[-2])
        rows["test"][0].append(u), rows["test"][1].append(seq[: len(seq) - 1]), rows["test"][2].append(seq[-1])
    splits = {k: Split.from_lists(*v, max_history=max_history) for k, v in rows.items()}
    return Dataset(name="synth", item_ids=[f"i{i}" for i in range(n_items)], item_text=[{"title": f"item {i}"} for i in range(n_items)],
                   user_ids=[f"u{u}" for u in range(n_users)], sequences=seqs, splits=splits, max_history=max_history)

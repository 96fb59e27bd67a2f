"""RQ-VAE (TIGER / LC-Rec style) in torch.

``z = E(x)`` (MLP), residual vector quantization of ``z`` over ``L`` codebooks ``C_l``:

    r_0 = z,  c_l = argmin_k ||r_l - C_l[k]||²,  e_l = C_l[c_l],  r_{l+1} = r_l - e_l,
    ẑ = Σ_l e_l  (straight-through: ẑ_st = z + sg(ẑ - z)),  x̂ = D(ẑ_st)

    loss = ||x - x̂||² + Σ_l ( ||sg(r_l) - e_l||² + β ||r_l - sg(e_l)||² )

(reconstruction, codebook and commitment terms; ``sg`` = stop-gradient; the reconstruction is
summed over the ``d`` input coordinates and the VQ terms averaged over the latent ones, so a
unit-norm 384-d embedding's reconstruction is not drowned by the VQ terms, which otherwise
collapses the latents onto the level-0 codes). Codebooks are
initialised by faiss k-means on the residuals of the untrained encoder's latents (level by
level); every ``dead_code_every`` epochs, codes no item used since the last restart are re-seeded
with random residuals of that level (dead-code restart). The trained encoder's weights are kept
in the codebook artifact so new items can be tokenized later without retraining.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from components.tokenizer.encoders import check_embeddings, resolve_device
from components.tokenizer.rq_kmeans import RQResult, check_sizes, kmeans, quant_errors

log = logging.getLogger(__name__)


def mlp(dims: list[int]):
    import torch.nn as nn

    layers: list[Any] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def build_encoder(config: dict[str, Any]):
    return mlp([int(config["in_dim"]), *[int(h) for h in config["hidden"]], int(config["latent_dim"])])


class RQVAE:
    """Holds the torch modules; a plain class so the module tree stays obvious."""

    def __init__(self, in_dim: int, hidden: list[int], latent_dim: int, sizes: list[int], beta: float = 0.25):
        import torch
        import torch.nn as nn

        self.config = {"in_dim": in_dim, "hidden": list(hidden), "latent_dim": latent_dim}
        self.encoder = build_encoder(self.config)
        self.decoder = mlp([latent_dim, *reversed(hidden), in_dim])
        self.codebooks = nn.ParameterList([nn.Parameter(torch.randn(k, latent_dim) * 0.1) for k in sizes])
        self.beta = beta

    def modules(self):
        return [self.encoder, self.decoder, self.codebooks]

    def parameters(self):
        return [p for m in self.modules() for p in m.parameters()]

    def to(self, device: str) -> "RQVAE":
        for m in self.modules():
            m.to(device)
        return self

    def quantize(self, z):
        """(codes [n, L], ẑ [n, d], per-level residuals list, vq loss)."""
        import torch
        import torch.nn.functional as F

        r = z
        zq = torch.zeros_like(z)
        codes, residuals, loss = [], [], z.new_zeros(())
        for cb in self.codebooks:
            c = torch.cdist(r.detach(), cb.detach()).argmin(1)
            e = cb[c]
            loss = loss + F.mse_loss(e, r.detach()) + self.beta * F.mse_loss(r, e.detach())
            residuals.append(r.detach())
            codes.append(c)
            zq = zq + e
            r = r - e.detach()
        return torch.stack(codes, 1), zq, residuals, loss

    def loss(self, x):

        z = self.encoder(x)
        codes, zq, residuals, vq = self.quantize(z)
        x_hat = self.decoder(z + (zq - z).detach())
        rec = ((x_hat - x) ** 2).sum(-1).mean()  # ||x - x̂||² per item (not per coordinate)
        return rec + vq, rec, vq, codes, residuals


def train_rqvae(x: np.ndarray, sizes: list[int], p: Any, seed: int = 0, progress: bool = False) -> tuple[RQResult, np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Train on item embeddings ``x``; returns (RQResult in latent space, latents z, encoder weights, encoder config).

    ``p`` is :class:`~components.tokenizer.params.RQVAEParams`.
    """
    import torch
    from tqdm.auto import tqdm

    x = check_embeddings(x)
    check_sizes(len(x), sizes)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = resolve_device(p.device)
    model = RQVAE(x.shape[1], list(p.hidden), p.latent_dim, sizes, p.beta).to(device)
    xt = torch.from_numpy(x).to(device)

    if p.kmeans_init:
        with torch.no_grad():
            r = model.encoder(xt).cpu().numpy()
            for lvl, k in enumerate(sizes):
                cw = kmeans(r, k, 20, seed + lvl)
                model.codebooks[lvl].data.copy_(torch.from_numpy(cw))
                r = r - cw[torch.cdist(torch.from_numpy(r), torch.from_numpy(cw)).argmin(1).numpy()]

    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    used = [torch.zeros(k, dtype=torch.bool, device=device) for k in sizes]
    bar = tqdm(range(p.epochs), desc="rq-vae", disable=not progress)
    for epoch in bar:
        perm = torch.from_numpy(rng.permutation(len(x))).to(device)
        for s in range(0, len(x), p.batch_size):
            batch = xt[perm[s : s + p.batch_size]]
            loss, rec, vq, codes, _ = model.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for lvl in range(len(sizes)):
                used[lvl][codes[:, lvl]] = True
        if p.dead_code_every and (epoch + 1) % p.dead_code_every == 0 and epoch + 1 < p.epochs:
            with torch.no_grad():
                _, _, residuals, _ = model.quantize(model.encoder(xt))
                for lvl, cb in enumerate(model.codebooks):
                    dead = torch.nonzero(~used[lvl]).flatten()
                    if dead.numel():
                        pick = torch.from_numpy(rng.choice(len(x), size=dead.numel(), replace=dead.numel() > len(x))).to(device)
                        cb.data[dead] = residuals[lvl][pick]
                    used[lvl].zero_()
        bar.set_postfix(rec=f"{rec.item():.4f}", vq=f"{vq.item():.4f}")

    with torch.no_grad():
        z = model.encoder(xt)
        codes, _, _, _ = model.quantize(z)
    z_np = z.cpu().numpy().astype(np.float32)
    codes_np = codes.cpu().numpy().astype(np.int32)
    codewords = [cb.detach().cpu().numpy().astype(np.float32) for cb in model.codebooks]
    res = RQResult(codes_np, codewords, quant_errors(z_np, codes_np, codewords))
    weights = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.encoder.state_dict().items()}
    return res, z_np, weights, dict(model.config)


def encode_latents(x: np.ndarray, weights: dict[str, np.ndarray], config: dict[str, Any]) -> np.ndarray:
    """Apply a stored RQ-VAE encoder to embeddings ``x`` (CPU)."""
    import torch

    enc = build_encoder(config)
    enc.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    with torch.no_grad():
        return enc(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy().astype(np.float32)

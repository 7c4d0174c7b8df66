"""Residual vector quantization (RVQ): a vector becomes K small integers, one per codebook.

Codebook 1 picks its nearest entry to the vector; codebook 2 quantizes what is left over (the
residual), codebook 3 the residual of that, and so on. Each codebook adds log2(C) bits and
removes part of the error, coarse to fine. This is the quantizer of SoundStream (Zeghidour et
al. 2021), EnCodec (Defossez et al. 2022), DAC (Kumar et al. 2023) and Mimi/Moshi, and the kind
of code Qwen2.5-Omni's and Qwen3-Omni's Talkers write.

Done the way those codecs do it, because a naive VQ collapses onto a few codes:
- k-means initialisation: the first training batch's vectors are clustered (k-means++ seeds,
  a few Lloyd iterations) and the centroids become the codebook, so every code starts where data is;
- EMA updates (van den Oord et al. 2017, appendix): a code moves to the running mean of the
  vectors assigned to it (decay ~0.99) instead of following a gradient; Laplace smoothing keeps
  the division well defined for rarely used codes;
- commitment loss: the encoder is pulled towards its chosen codes, ||z - sg(q)||^2;
- dead-code restart: a code whose EMA count falls below a threshold is moved onto a random
  vector of the current batch (EnCodec: threshold 2);
- quantizer dropout: on a share of the training examples only the first n ~ U{1..K} codebooks
  are used, so that fewer codebooks still decode (a share of one half, as DAC found best);
- straight-through gradients: the decoder sees the quantized vector, the encoder receives the
  decoder's gradient as if quantization were the identity.

Everything the RVQ learns lives in buffers, so a checkpoint holds it; its random choices come
from torch's global generator, which the trainer saves, so a resumed run repeats them exactly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row for each row of x: (N, D), (C, D) -> (N,)."""
    # ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2; the first term is the same for every code
    dist = -2 * x @ codebook.t() + codebook.pow(2).sum(1)[None, :]  # (N, C)
    return dist.argmin(dim=1)


def kmeans(x: torch.Tensor, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on (N, D) vectors: k centroids (k, D) and their cluster sizes (k,).
    Seeded by k-means++ (Arthur & Vassilvitskii 2007: each next seed is drawn with probability
    proportional to its squared distance from the seeds so far, so the seeds spread over the
    data and Lloyd does not get stuck with two seeds in one cluster). With N <= k the seeds are
    N vectors drawn with replacement. An empty cluster keeps its centroid."""
    if len(x) <= k:
        centroids = x[torch.randint(len(x), (k,))].clone()
    else:
        centroids = x.new_empty(k, x.shape[1])
        centroids[0] = x[torch.randint(len(x), ())]
        d2 = (x - centroids[0]).pow(2).sum(1)  # (N,) squared distance to the nearest seed so far
        for j in range(1, k):
            centroids[j] = x[torch.multinomial(d2 + 1e-12, 1)[0]]
            d2 = torch.minimum(d2, (x - centroids[j]).pow(2).sum(1))
    for _ in range(iters):
        assign = nearest(x, centroids)  # (N,)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)  # (k,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)  # (k, D)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids, torch.bincount(nearest(x, centroids), minlength=k).to(x.dtype)


class ResidualVQ(nn.Module):
    """(B, T, D) vectors -> quantized (B, T, D) and codes (B, T, K) long, with K codebooks of C codes."""

    def __init__(self, dim: int, n_codebooks: int, codebook_size: int, decay: float = 0.99,
                 kmeans_iters: int = 10, dead_threshold: float = 2.0, dropout: float = 0.5,
                 eps: float = 1e-5):
        super().__init__()
        self.K, self.C, self.dim = n_codebooks, codebook_size, dim
        self.decay, self.kmeans_iters, self.eps = decay, kmeans_iters, eps
        self.dead_threshold, self.dropout = dead_threshold, dropout
        self.register_buffer("embed", torch.randn(n_codebooks, codebook_size, dim))  # (K, C, D) the codes
        self.register_buffer("cluster_size", torch.ones(n_codebooks, codebook_size))  # (K, C) EMA counts
        self.register_buffer("embed_sum", self.embed.clone())  # (K, C, D) EMA sums of assigned vectors
        self.register_buffer("initted", torch.zeros(()))  # 1 once k-means has run on a first batch

    @property
    def bits_per_frame(self) -> float:
        return self.K * math.log2(self.C)

    def ema_update(self, k: int, x: torch.Tensor, codes: torch.Tensor) -> None:
        """Move codebook k towards the mean of the vectors assigned to each code. x (N, D), codes (N,).
        N_c <- decay N_c + (1 - decay) n_c ;  S_c <- decay S_c + (1 - decay) sum(x assigned to c) ;
        e_c <- S_c / N~_c, where N~_c = (N_c + eps) / (sum N + C eps) * sum N (Laplace smoothing)."""
        onehot = F.one_hot(codes, self.C).to(x.dtype)  # (N, C)
        self.cluster_size[k].mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum[k].mul_(self.decay).add_(onehot.t() @ x, alpha=1 - self.decay)
        n = self.cluster_size[k].sum()
        smoothed = (self.cluster_size[k] + self.eps) / (n + self.C * self.eps) * n  # (C,)
        self.embed[k].copy_(self.embed_sum[k] / smoothed[:, None])

    def restart_dead(self, k: int, x: torch.Tensor) -> int:
        """Replace the codes of codebook k whose EMA count is below the threshold by random vectors
        of x (N, D). Returns how many were restarted."""
        dead = (self.cluster_size[k] < self.dead_threshold).nonzero().squeeze(1)  # (n_dead,)
        if len(dead) == 0:
            return 0
        picks = x[torch.randint(len(x), (len(dead),))]  # (n_dead, D)
        self.embed[k, dead] = picks
        self.cluster_size[k, dead] = self.dead_threshold  # a fresh code gets a few steps to be chosen
        self.embed_sum[k, dead] = picks * self.dead_threshold
        return len(dead)

    def init_codebook(self, k: int, x: torch.Tensor) -> None:
        centroids, counts = kmeans(x, self.C, self.kmeans_iters)
        self.embed[k] = centroids
        self.cluster_size[k] = counts
        self.embed_sum[k] = centroids * counts[:, None]

    def forward(self, z: torch.Tensor, n_codebooks: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """z (B, T, D) -> (quantized (B, T, D) with straight-through gradients, codes (B, T, n) long,
        extras: "commit" loss and "restarts" count). In training mode the codebooks learn (EMA) and
        quantizer dropout applies; `n_codebooks` uses only the first n (at most K)."""
        B, T, D = z.shape
        n = self.K if n_codebooks is None else n_codebooks
        learn = self.training and torch.is_grad_enabled()
        # Codebooks used per example: K, or for a `dropout` share of the examples n ~ U{1..K}.
        n_used = torch.full((B,), n)
        if learn and self.dropout > 0:
            drop = torch.rand(B) < self.dropout
            n_used = torch.where(drop, torch.randint(1, n + 1, (B,)), n_used)
        init = learn and not bool(self.initted)  # the first training batch: k-means, then EMA
        if init:
            self.initted.fill_(1)
        with torch.autocast(z.device.type, enabled=False):  # distances and EMA sums in fp32
            return self._quantize(z, n, n_used, init)

    def _quantize(self, z: torch.Tensor, n: int, n_used: torch.Tensor, init: bool):
        B, T, D = z.shape
        learn = self.training and torch.is_grad_enabled()
        residual = z.detach().float()  # the codebooks learn from encoder outputs, not through them
        quantized = torch.zeros_like(residual)
        codes, commit, restarts = [], z.new_zeros(()), 0
        for k in range(n):
            active = (n_used > k).to(z.device)  # (B,) examples that use codebook k
            flat = residual.reshape(-1, D)  # (B*T, D)
            used = flat[active.repeat_interleave(T)]  # (N, D) vectors this codebook learns from
            if init and len(used):
                self.init_codebook(k, used)
            idx = nearest(flat, self.embed[k]).view(B, T)  # (B, T)
            q = self.embed[k][idx]  # (B, T, D)
            if learn and len(used):
                self.ema_update(k, used, idx.reshape(-1)[active.repeat_interleave(T)])
                restarts += self.restart_dead(k, used)
            mask = active[:, None, None].to(q.dtype)  # (B, 1, 1)
            # commitment: the encoder's part of the residual should stay near its code
            target = (quantized + q * mask).detach()
            commit = commit + (((z.float() - target) ** 2) * mask).mean() / n
            quantized = quantized + q * mask
            residual = residual - q * mask
            codes.append(idx)
        out = z + (quantized.to(z.dtype) - z).detach()  # straight-through: forward q, backward identity
        return out, torch.stack(codes, dim=-1), {"commit": commit, "restarts": float(restarts)}

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, T, n) with n <= K -> the sum of the chosen codes of the first n codebooks (B, T, D)."""
        return sum(self.embed[k][codes[..., k]] for k in range(codes.shape[-1]))


def usage(codes: torch.Tensor, codebook_size: int) -> tuple[list[float], list[int]]:
    """Per codebook: perplexity of the code histogram (C = all codes equally used, 1 = a single code)
    and the number of codes never used, from held-out codes (N, K)."""
    ppl, dead = [], []
    for k in range(codes.shape[-1]):
        p = torch.bincount(codes[:, k], minlength=codebook_size).float()
        p = p / p.sum()
        ppl.append(float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())))
        dead.append(int((p == 0).sum()))
    return ppl, dead

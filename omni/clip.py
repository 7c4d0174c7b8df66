"""Contrastive image-text alignment in the style of CLIP (Radford et al. 2021).

Two encoders, one for pictures (omni/vision.py) and one for captions (below), each end in a
linear projection to a shared embed_dim and are unit-normalised. In a batch of B pairs, the
B x B matrix of cosine similarities, scaled by a learned inverse temperature, is read as B
classification problems in each direction: which caption belongs to this picture, which
picture belongs to this caption. Pushing the true pair up and the B - 1 others down makes the
picture embedding carry whatever tells captions apart: here colours, shapes, sizes, places and
counts, and their binding ("the red one is the circle").

Tiny worlds repeat themselves: two pictures in a batch can have the very same caption. Treating
the other one as a negative would push apart things that are identical, so the targets are
multi-positive: every item in the batch with the same caption shares the probability mass.
Different but similar captions stay negatives, as they should: they state a different fact.

The text encoder reads the Thinker's own sentencepiece tokens (stage A), so the same words mean
the same ids everywhere in TinyOmni. It is bidirectional and pooled at the EOS token, as in CLIP.
"""
import math
import textwrap
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from omni.vision import EncoderBlock, VisionConfig, VisionEncoder


@dataclass
class TextConfig:
    max_len: int = 64  # tokens per caption including BOS and EOS; longer captions are cut
    d_model: int = 128  # width of the text transformer
    n_layer: int = 2  # transformer blocks
    n_head: int = 4  # attention heads
    mlp_ratio: int = 4  # MLP hidden width in multiples of d_model
    dropout: float = 0.0  # dropout inside the blocks (0 = off)


@dataclass
class ClipConfig:
    embed_dim: int = 128  # width of the shared image-text space
    init_temperature: float = 0.07  # softmax temperature at the start (CLIP's value)
    max_logit_scale: float = 100.0  # the learned 1/temperature is clamped to at most this


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextConfig, vocab_size: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, cfg.d_model)
        self.pos = nn.Parameter(torch.randn(1, cfg.max_len, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(cfg.d_model, cfg.n_head, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, ids, lengths):  # ids: (B, T) token ids, lengths: (B,) tokens before padding
        B, T = ids.shape
        pad = torch.arange(T, device=ids.device)[None, :] >= lengths[:, None]  # (B, T) True = padding
        x = self.tok(ids) + self.pos[:, :T]
        for block in self.blocks:
            x = block(x, pad)
        x = self.ln_f(x)  # (B, T, d)
        return x[torch.arange(B, device=ids.device), lengths - 1]  # (B, d): the EOS token


class CLIP(nn.Module):
    def __init__(self, vision: VisionConfig, text: TextConfig, cfg: ClipConfig, vocab_size: int):
        super().__init__()
        self.vision = VisionEncoder(vision)
        self.text = TextEncoder(text, vocab_size)
        self.image_proj = nn.Linear(vision.width, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(text.d_model, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))
        self.max_log_scale = math.log(cfg.max_logit_scale)

    def encode_image(self, images):  # (B, 3, H, W) in [0, 1] -> (B, embed_dim), unit length
        return F.normalize(self.image_proj(self.vision(images)[1]), dim=-1)

    def encode_text(self, ids, lengths):  # (B, T), (B,) -> (B, embed_dim), unit length
        return F.normalize(self.text_proj(self.text(ids, lengths)), dim=-1)

    def scale(self):  # exp of the learned log scale, clamped as in CLIP so training stays stable
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, images, ids, lengths):  # -> (B, E) pictures, (B, E) captions, the scale
        return self.encode_image(images), self.encode_text(ids, lengths), self.scale()


def clip_loss(img, txt, scale, caption_ids=None):
    """Symmetric contrastive loss. img, txt: (B, E) unit vectors of matching pairs; scale: the
    inverse temperature; caption_ids: (B,) equal ids mark identical captions (multi-positive)."""
    logits = scale * img @ txt.T  # (B, B): picture i against caption j
    if caption_ids is None:
        targets = torch.eye(len(img), device=img.device)
    else:
        caption_ids = caption_ids.to(img.device)
        same = (caption_ids[:, None] == caption_ids[None, :]).float()  # (B, B), symmetric
        targets = same / same.sum(1, keepdim=True)  # each row sums to 1
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T)) / 2


def encode_captions(tokenizer, captions: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Captions -> ids (n, max_len) padded with 0, lengths (n,), and how many were cut to fit.
    Each caption becomes BOS + pieces + EOS; a cut caption keeps its EOS, the pooling point."""
    ids = torch.zeros(len(captions), max_len, dtype=torch.long)
    lengths = torch.zeros(len(captions), dtype=torch.long)
    cut = 0
    for i, text in enumerate(captions):
        pieces = tokenizer.encode(text)
        if len(pieces) > max_len - 2:
            pieces, cut = pieces[:max_len - 2], cut + 1
        seq = [tokenizer.bos_id, *pieces, tokenizer.eos_id]
        ids[i, :len(seq)] = torch.tensor(seq)
        lengths[i] = len(seq)
    return ids, lengths, cut


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def embed_images(model: CLIP, images, batch_size: int = 256):  # uint8 (n, 3, H, W) -> (n, E)
    dev = model.logit_scale.device
    return torch.cat([model.encode_image(images[i:i + batch_size].to(dev).float() / 255)
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def embed_texts(model: CLIP, ids, lengths, batch_size: int = 512):  # (n, T), (n,) -> (n, E)
    dev = model.logit_scale.device
    return torch.cat([model.encode_text(ids[i:i + batch_size].to(dev), lengths[i:i + batch_size].to(dev))
                      for i in range(0, len(ids), batch_size)])


def retrieval_groups(captions: list[str], n: int) -> list[list[int]]:
    """Indices in groups of n with n distinct captions: the first picture of each caption, in
    order, cut into consecutive groups (the remainder is dropped)."""
    seen, first = set(), []
    for i, c in enumerate(captions):
        if c not in seen:
            seen.add(c)
            first.append(i)
    return [first[k:k + n] for k in range(0, len(first) - n + 1, n)]


def retrieval_accuracy(img, txt, groups: list[list[int]]) -> dict[str, float]:
    """Top-1 retrieval inside each group of N candidates with distinct captions.
    t2i: for each caption, is its own picture the most similar of the N? i2t: the converse.
    Chance is 1/N."""
    t2i = i2t = total = 0
    for g in groups:
        sim = img[g] @ txt[g].T  # (N, N): picture i against caption j
        truth = torch.arange(len(g), device=sim.device)
        i2t += (sim.argmax(1) == truth).sum().item()
        t2i += (sim.argmax(0) == truth).sum().item()
        total += len(g)
    return {"t2i": t2i / max(1, total), "i2t": i2t / max(1, total)}


def zero_shot_predict(img, prompt_emb: dict[str, torch.Tensor], scale: float) -> list[str]:
    """Classify each picture with no training for the task: prompt_emb maps each class to the
    (k, E) embeddings of k captions that say it (e.g. every one-object caption with "red").
    The model's softmax over all prompts, summed per class, is p(class | picture); the best class
    wins. img: (n, E) -> n class names."""
    names = list(prompt_emb)
    prompts = torch.cat([prompt_emb[c] for c in names])  # (P, E)
    owner = torch.cat([torch.full((len(prompt_emb[c]),), k) for k, c in enumerate(names)]).to(img.device)
    logp = torch.log_softmax(scale * img @ prompts.T, dim=1)  # (n, P)
    per_class = torch.stack([logp[:, owner == k].logsumexp(1) for k in range(len(names))], 1)  # (n, classes)
    return [names[k] for k in per_class.argmax(1).tolist()]


def zero_shot_accuracy(img, prompt_emb: dict[str, torch.Tensor], labels: list[str | None], scale: float) -> float:
    """The share of pictures zero_shot_predict gets right. labels: the true class of each picture,
    None to leave it out. Chance is 1/classes."""
    keep = [i for i, y in enumerate(labels) if y is not None]
    if not keep:
        return float("nan")
    pred = zero_shot_predict(img[keep], prompt_emb, scale)
    return sum(p == labels[i] for p, i in zip(pred, keep)) / len(keep)


@torch.no_grad()
def plot_retrievals(model: CLIP, images, ids, lengths, captions: list[str], n: int, out, rows: int = 6) -> None:
    """A figure of `rows` caption-to-image retrievals: the caption, then the model's top three of
    its N candidates (green border: the caption's own picture, red: another one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    was_training = model.training
    model.eval()
    img, txt = embed_images(model, images), embed_texts(model, ids, lengths)
    model.train(was_training)
    groups = retrieval_groups(captions, n)[:rows]
    fig, axes = plt.subplots(len(groups), 4, figsize=(7, 1.9 * len(groups)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.9, 1, 1, 1]})
    for r, g in enumerate(groups):
        sims = (txt[g[0]] @ img[g].T).cpu()  # the group's first caption against its N pictures
        axes[r][0].text(0, 0.5, "\n".join(textwrap.wrap(captions[g[0]], 34)), va="center", fontsize=8)
        axes[r][0].axis("off")
        for c, j in enumerate(sims.argsort(descending=True)[:3].tolist(), start=1):
            ax = axes[r][c]
            ax.imshow(images[g[j]].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_color("green" if j == 0 else "red")
                side.set_linewidth(3)
            ax.set_title(f"#{c}  sim {sims[j]:.2f}", fontsize=7)
    fig.suptitle(f"caption -> picture among {n} candidates (green: right, red: wrong)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


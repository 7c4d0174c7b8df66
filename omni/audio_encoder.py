"""The audio encoder: log-mel frames -> frame-level features, trained here with a CTC head.

Design (scaled-down Whisper encoder, which Qwen2.5-Omni also uses for its audio input):
a convolutional stem (Whisper's stride-1 convolution, then two with stride 2) turns 100 mel
frames per second into 25 feature frames per second (one every 40 ms, as in Qwen2.5-Omni),
sinusoidal positions are added, then pre-norm transformer blocks attend over the whole clip (no
causal mask: an encoder may look ahead) with a padding mask so that padded frames are never
attended to, and a final LayerNorm.
`AudioEncoder` returns (B, T', d_model) features and their lengths; stage E projects those into
the Thinker. For stage B, `AudioCTC` adds a linear CTC head over characters.

CTC (Graves et al. 2006, https://www.cs.toronto.edu/~graves/icml_2006.pdf) trains a per-frame
classifier without knowing which frame belongs to which character: the loss sums over every
alignment that collapses to the transcript (merge repeats, then remove the blank symbol 0).
Greedy decoding takes the best symbol per frame and applies the same collapse.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class CharVocab:
    """Characters for CTC: id 0 is the blank, then space, apostrophe and a..z."""

    blank = 0

    def __init__(self, chars: str = " 'abcdefghijklmnopqrstuvwxyz"):
        self.chars = chars
        self.index = {c: i + 1 for i, c in enumerate(chars)}

    def __len__(self) -> int:
        return len(self.chars) + 1

    def is_valid(self, text: str) -> bool:
        return len(text) > 0 and all(c in self.index for c in text)

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if i != self.blank)


@dataclass
class AudioEncoderConfig:
    n_mels: int = 80  # input features per frame (must match the front end)
    d_model: int = 192  # width of the transformer
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads (d_model / n_head = head size)
    d_ff: int = 768  # hidden size of each block's MLP
    dropout: float = 0.1  # dropout in attention outputs and MLPs while training
    vocab_size: int = 29  # CTC classes: blank + space + apostrophe + a..z (CharVocab)
    ctc_upsample: int = 2  # CTC symbols per encoder frame: 2 gives 50 per second for the characters


def downsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after the stem: each stride-2 conv (kernel 3, padding 1) maps T to ceil(T / 2)."""
    for _ in range(2):
        lengths = (lengths - 1) // 2 + 1
    return lengths


def sinusoids(length: int, dim: int) -> torch.Tensor:
    """Fixed sine/cosine positions (Vaswani et al. 2017), (length, dim); no maximum length."""
    inv = torch.exp(-math.log(10000.0) * torch.arange(dim // 2) / (dim // 2 - 1))
    angle = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(),
                                 nn.Linear(cfg.d_ff, cfg.d_model), nn.Dropout(cfg.dropout))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.n_head, D // self.n_head).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, n_head, T, head_dim)
        # keep: (B, 1, 1, T) True where a key frame is real audio, so padding is never attended to
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, D)))
        return x + self.mlp(self.norm2(x))


class AudioEncoder(nn.Module):
    """(B, T, n_mels) log-mel frames at 100/s -> (B, ceil(T / 4), d_model) features at 25/s."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Sequential(  # Conv1d wants (B, channels, T)
            nn.Conv1d(cfg.n_mels, cfg.d_model, 3, padding=1), nn.GELU(),  # 100/s, as Whisper's first conv
            nn.Conv1d(cfg.d_model, cfg.d_model, 3, stride=2, padding=1), nn.GELU(),  # 50/s
            nn.Conv1d(cfg.d_model, cfg.d_model, 3, stride=2, padding=1), nn.GELU())  # 25/s
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(feats.transpose(1, 2)).transpose(1, 2)  # (B, T', d_model)
        out_lengths = downsampled_lengths(lengths)
        T = x.shape[1]
        x = x + sinusoids(T, x.shape[2]).to(x.dtype).to(x.device)
        keep = torch.arange(T, device=x.device)[None, :] < out_lengths[:, None]  # (B, T')
        for block in self.blocks:
            x = block(x, keep[:, None, None, :])
        return self.norm(x), out_lengths


class AudioCTC(nn.Module):
    """The encoder plus a linear CTC head; stage E keeps `encoder` and drops `head`.

    Speech carries 10-20 characters per second, and CTC needs a blank between repeated letters,
    so 25 slots per second would have to be mostly non-blank, which makes CTC slow to learn. The
    head therefore emits `ctc_upsample` symbols per encoder frame (one linear layer, reshaped):
    the encoder keeps its 25 frames per second for stage E, the characters get 50.
    """

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.encoder = AudioEncoder(cfg)
        self.up = cfg.ctc_upsample
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size * cfg.ctc_upsample)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities (B, T' * ctc_upsample, vocab_size) per CTC slot, and their lengths (B,)."""
        h, out_lengths = self.encoder(feats, lengths)
        logits = self.head(h).float()  # (B, T', up * vocab_size)
        logits = logits.view(h.shape[0], h.shape[1] * self.up, -1)  # (B, T' * up, vocab_size)
        return F.log_softmax(logits, dim=-1), out_lengths * self.up


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best path: argmax per frame, merge repeated symbols, drop blanks. (B, T, V) -> B id lists."""
    best = log_probs.argmax(dim=-1).tolist()  # (B, T)
    out = []
    for path, n in zip(best, lengths.tolist()):
        ids, prev = [], blank
        for s in path[:n]:
            if s != prev and s != blank:
                ids.append(s)
            prev = s
        out.append(ids)
    return out

"""Projectors: the bridge from an encoder's feature space into the Thinker's embedding space.

The frozen encoders of stages B and C speak their own languages: the audio encoder's frames are
d_audio wide and were shaped by a CTC loss, the vision encoder's merged patch tokens are
d_vision wide and were shaped by a contrastive loss. The Thinker only understands vectors that
look like its token embeddings (d_model wide, of a certain scale and direction). A projector per
modality learns that translation: a LayerNorm (the encoders' feature scales differ), then a
two-layer MLP with a GELU, as LLaVA-1.5 (Liu et al. 2023, arXiv:2310.03744) found better than
one linear layer, and as Qwen2.5-Omni uses for its audio and its merged vision tokens.

A projected feature frame is then an "embedding" like any token's, and takes the place of one
placeholder token in the sequence (omni/chat_template.py, `splice`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ProjectorConfig:
    hidden: int = 256  # hidden width of each projector's MLP (channels)
    dropout: float = 0.0  # dropout on the hidden layer while training (0 = off)

    def __post_init__(self):
        if self.hidden < 1:
            raise ValueError(f"ProjectorConfig.hidden must be at least 1, got {self.hidden}")


class Projector(nn.Module):
    """(..., d_in) encoder features -> (..., d_model) Thinker embeddings."""

    def __init__(self, d_in: int, d_model: int, cfg: ProjectorConfig):
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.up = nn.Linear(d_in, cfg.hidden)
        self.down = nn.Linear(cfg.hidden, d_model)
        self.drop = nn.Dropout(cfg.dropout)
        # Start small, at the scale of the Thinker's own embeddings (normal(0, 0.02) at init):
        # a projector that starts loud would drown the text around its positions.
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.drop(nn.functional.gelu(self.up(self.norm(x)))))

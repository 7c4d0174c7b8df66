"""Projectors: the bridge from an encoder's feature space into the Thinker's embedding space.

The frozen encoders of stages B and C speak their own languages: the audio encoder's frames are
d_audio wide and were shaped by a CTC loss, the vision encoder's merged patch tokens are
d_vision wide and were shaped by a contrastive loss. The Thinker only understands vectors that
look like its token embeddings (d_model wide, of a certain scale and direction). A projector per
modality learns that translation: a LayerNorm (the encoders' feature scales differ), then a
two-layer MLP with a GELU, as LLaVA-1.5 (Liu et al. 2023, arXiv:2310.03744) found better than
one linear layer, and as Qwen2.5-Omni uses for its audio and its merged vision tokens.

The MLP ends in an RMS norm whose gain starts at the Thinker's own embedding scale (`match`):
without it nothing holds the projected frames near the size of the word embeddings around them.
We measured what happens then: in 60 projector-only steps (the Thinker frozen, so the only
thing the projector can change is its output) the image frames grew to a norm of ~60, more than
100 times a token embedding's ~0.5. In the Thinker's pre-norm blocks, whatever the attention and
MLP add at those positions is then negligible next to the frame itself, and the picture could not
be read well (LLaVA-style projectors need a norm or a matched scale, as Qwen2-VL's merger has).

The image projector also adds a learned embedding per token position in the picture (9 cells
for a 48-pixel picture after the 2x2 merge). Stage C's contrastive loss only ever saw the mean
of the tokens, so they kept little of where they are: a linear probe tells a merged token's cell
from its features for 22% of test tokens (chance 11%), though its colour for 99.8% and its shape
for 93%. The Thinker could only guess a cell from the token's distance to the question (RoPE),
which changes with the question's length. Qwen2-VL gives each patch a 2-D rotary position for the
same reason; one learned vector per cell is the smallest version of that.

A projector can also be one linear layer (ProjectorConfig.linear names the modalities), and, like
any part, be frozen by a freeze plan. The tiny config does both for pictures. The stage C tokens
hold colour and shape along separate directions: a linear probe trained on training pictures
reads the shape of objects in colour-shape pairs never seen in training for 98% of them, their
colour for 99.8%. A learned MLP in between bends that space to fit the training pictures, where
"triangle" also means "not red": asked about a red triangle, a Thinker trained through it answered
the colour of 53% of the unseen pairs right (1-4 objects, colour questions only, 600 steps).
Through one frozen random linear map, which keeps the directions apart (a random projection to
more dimensions keeps distances, Johnson and Lindenstrauss 1984), the same run answered 90%
(chapters/logs/omni_dev_projector.txt). The learning then happens where the attention is: in
the Thinker's own query and key maps.

A projected feature frame is then an "embedding" like any token's, and takes the place of one
placeholder token in the sequence (omni/chat_template.py, `splice`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ProjectorConfig:
    hidden: int = 256  # hidden width of each projector's MLP (channels)
    dropout: float = 0.0  # dropout on the hidden layer while training (0 = off)
    out_norm: bool = True  # RMS-norm the output, gain starting at the token embeddings' scale (False = raw MLP)
    image_pos: bool = True  # image projector: add a learned embedding per token position (cell) of the picture
    image_pos_names: bool = False  # cell vectors start at the Thinker's embedding of the cell's name ("top left")
    image_words: bool = False  # the linear image map starts as the least-squares fit from a cell's token to the
    # Thinker's embeddings of the words that describe what is in it (needs linear ["image"]; sft_omni.py fits it)
    linear: list[str] = field(default_factory=list)  # modalities ("image", "audio") projected by one linear layer
    init: str = "normal"  # output layer's start: "normal" (std 0.02) or "orthogonal" (keeps every direction's length)
    audio_ctc: float = 0.0  # weight of a CTC loss: the projected audio frames spell what is said in Thinker tokens
    audio_chars: float = 0.0  # weight of a CTC loss: the audio frames the projector reads spell what is said in
    # characters (stage B's alphabet, through a linear head of stage E's own), for transcribe.spelling "chars"
    audio_context: int = 0  # audio frames on each side stacked with each frame at the projector's input (0 = alone)
    audio_tokens: bool = False  # audio frames enter as token embeddings weighted by their spelling (LegoSLM)

    def __post_init__(self):
        if self.hidden < 1:
            raise ValueError(f"ProjectorConfig.hidden must be at least 1, got {self.hidden}")
        if set(self.linear) - {"image", "audio"}:
            raise ValueError(f"ProjectorConfig.linear: modalities are 'image' and 'audio', got {self.linear}")
        if self.audio_ctc < 0 or self.audio_chars < 0:
            raise ValueError(f"ProjectorConfig.audio_ctc and audio_chars must be >= 0, got {self.audio_ctc}, "
                             f"{self.audio_chars}")
        if self.audio_context < 0:
            raise ValueError(f"ProjectorConfig.audio_context must be >= 0, got {self.audio_context}")
        if self.audio_tokens and not self.audio_ctc:
            raise ValueError("ProjectorConfig.audio_tokens needs audio_ctc > 0: the spelling it reads is learned "
                             "by that loss")
        if self.image_words and "image" not in self.linear:
            raise ValueError("ProjectorConfig.image_words fits a linear image map: add 'image' to linear")
        if self.init not in ("normal", "orthogonal"):
            raise ValueError(f"ProjectorConfig.init must be 'normal' or 'orthogonal', got {self.init!r}")


class Projector(nn.Module):
    """(..., d_in) encoder features -> (..., d_model) Thinker embeddings. With n_pos > 0 the input is
    (..., n_pos, d_in), one frame per position of a picture, and each position adds its own vector.
    linear=True: no hidden layer, the LayerNorm then one linear map."""

    def __init__(self, d_in: int, d_model: int, cfg: ProjectorConfig, n_pos: int = 0, linear: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.up = None if linear else nn.Linear(d_in, cfg.hidden)
        self.down = nn.Linear(d_in if linear else cfg.hidden, d_model)
        self.drop = nn.Dropout(cfg.dropout)
        # Start small, at the scale of the Thinker's own embeddings (normal(0, 0.02) at init):
        # a projector that starts loud would drown the text around its positions.
        if cfg.init == "orthogonal":  # orthonormal columns (or rows), scaled to entries of the same size
            nn.init.orthogonal_(self.down.weight, gain=0.02 * max(self.down.weight.shape) ** 0.5)
        else:
            nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        self.out_norm = cfg.out_norm
        self.gain = nn.Parameter(torch.ones(d_model)) if cfg.out_norm else None  # (d_model,), set by `match`
        # (n_pos, d_model), at the embeddings' scale: a hint beside the content, not over it
        self.pos = nn.Parameter(torch.randn(n_pos, d_model) * 0.02) if n_pos else None

    @torch.no_grad()
    def match(self, embeddings: torch.Tensor):
        """Start the output gain at the root mean square of the Thinker's embedding table (vocab, d_model),
        so a projected frame is as large as a token embedding (no-op without out_norm)."""
        if self.gain is not None:
            self.gain.fill_(embeddings.float().pow(2).mean().sqrt().item())

    @torch.no_grad()
    def name_positions(self, embeddings: torch.Tensor, names: list[list[int]]):
        """Start each position's vector at the mean of the Thinker's embeddings (vocab, d_model) of its
        name's token ids (names[i]: the ids of " top left"), so a cell looks like the words that ask
        for it."""
        if self.pos is None or len(names) != len(self.pos):
            raise ValueError(f"name_positions: {len(names)} names for "
                             f"{0 if self.pos is None else len(self.pos)} positions")
        for i, ids in enumerate(names):
            self.pos[i] = embeddings[ids].float().mean(0)

    @torch.no_grad()
    def fit_words(self, feats: torch.Tensor, targets: torch.Tensor, ridge: float = 1e-2):
        """Set a linear projector's map to the ridge least-squares fit of targets (N, d_model) from feats
        (N, d_in): the encoder's tokens then arrive near the embeddings of the words that describe them,
        as a cell name does with name_positions. The same idea as LegoSLM's audio frames as token
        embeddings (Ma et al. 2025), fitted once instead of learned."""
        if self.up is not None:
            raise ValueError("fit_words: the projector must be linear (ProjectorConfig.linear)")
        x = self.norm(feats.float())
        x = torch.cat([x, x.new_ones(len(x), 1)], 1)  # (N, d_in + 1): the bias as a last input of ones
        a = x.T @ x + ridge * len(x) * torch.eye(x.size(1), device=x.device)
        w = torch.linalg.solve(a, x.T @ targets.float())  # (d_in + 1, d_model)
        self.down.weight.copy_(w[:-1].T)
        self.down.bias.copy_(w[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        y = self.down(x if self.up is None else self.drop(F.gelu(self.up(x))))  # (..., d_model)
        y = F.rms_norm(y, (y.size(-1),), self.gain) if self.out_norm else y
        return y + self.pos if self.pos is not None else y

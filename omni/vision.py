"""The vision encoder: a small Vision Transformer (ViT) that turns a picture into tokens.

A picture is cut into patch_size x patch_size squares; one strided convolution embeds each
square as a vector (the "patch embedding" of Dosovitskiy et al. 2021, "An Image is Worth 16x16
Words"). Learned position vectors say where each patch sits, and a stack of pre-norm transformer
blocks with full (not causal) attention lets every patch look at every other. The result:

- patch tokens (B, N, d_model), N = (image_size / patch_size)^2, one vector per square;
- optionally merged 2x2, as Qwen2.5-VL's PatchMerger does: the four neighbours of each 2x2
  block are concatenated (4 * d_model) and an MLP maps them to merge_dim, so a language model
  reads 4x fewer image tokens. With 48-pixel pictures and 8-pixel patches this gives 3x3 = 9
  tokens, exactly one per cell of the shapes world's grid;
- a pooled vector (B, width): the mean of the output tokens. We mean-pool rather than add a CLS
  token because stage E feeds the tokens themselves to the Thinker: with a mean, every token
  receives gradient from the stage C loss and must carry what is in its part of the picture;
  with a CLS token the other tokens matter only through what CLS chooses to read from them.

The bottom of the file holds the image loaders shared by every stage that reads pictures.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from omni.checkpoint import atomic_write_text
from omni.config import UserError


@dataclass
class VisionConfig:
    image_size: int = 48  # pictures are resized to image_size x image_size pixels
    patch_size: int = 8  # side of one patch in pixels; image_size must be a multiple
    d_model: int = 128  # width of the patch tokens
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads; d_model must be a multiple
    mlp_ratio: int = 4  # hidden width of each block's MLP, in multiples of d_model
    dropout: float = 0.0  # dropout on attention and MLP outputs (0 = off)
    merge_dim: int = 0  # >0: merge 2x2 neighbouring tokens into one of this width; 0: no merge

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise UserError(f"vision.image_size={self.image_size} must be a multiple of "
                            f"vision.patch_size={self.patch_size}")
        if self.d_model % self.n_head:
            raise UserError(f"vision.d_model={self.d_model} must be a multiple of vision.n_head={self.n_head}")
        if self.merge_dim and (self.image_size // self.patch_size) % 2:
            raise UserError(f"vision.merge_dim needs an even patch grid, got "
                            f"{self.image_size // self.patch_size}x{self.image_size // self.patch_size}")

    @property
    def grid(self) -> int:  # patches per side
        return self.image_size // self.patch_size

    @property
    def width(self) -> int:  # width of the tokens the encoder returns
        return self.merge_dim or self.d_model


class EncoderBlock(nn.Module):
    """Pre-norm transformer block with bidirectional attention: x + attn(ln(x)), x + mlp(ln(x)).
    Shared by the vision and text encoders; `pad` (B, T) marks key positions to ignore."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x, pad=None):  # x: (B, T, d_model), pad: (B, T) bool, True = padding
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_head, D // self.n_head).unbind(2)
        mask = None if pad is None else ~pad[:, None, None, :]  # (B, 1, 1, T): True = may attend
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x + F.dropout(self.proj(y.transpose(1, 2).reshape(B, T, D)), self.dropout, self.training)
        return x + self.mlp(self.ln2(x))


class PatchMerger(nn.Module):
    """Qwen2.5-VL's merger: (B, g*g, d) -> (B, (g/2)^2, d_out), one token per 2x2 block."""

    def __init__(self, d_model: int, d_out: int, grid: int):
        super().__init__()
        self.grid = grid
        self.ln = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(4 * d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_out))

    def forward(self, x):  # (B, g*g, d), tokens in row-major order
        B, _, d = x.shape
        g = self.grid
        x = self.ln(x).view(B, g // 2, 2, g // 2, 2, d)  # (B, row block, row in block, col block, col, d)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, (g // 2) ** 2, 4 * d)  # neighbours side by side
        return self.mlp(x)  # (B, (g/2)^2, d_out)


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch = nn.Conv2d(3, cfg.d_model, cfg.patch_size, stride=cfg.patch_size)  # one linear map per patch
        self.pos = nn.Parameter(torch.randn(1, cfg.grid ** 2, cfg.d_model) * 0.02)  # learned positions
        self.blocks = nn.ModuleList(EncoderBlock(cfg.d_model, cfg.n_head, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.merger = PatchMerger(cfg.d_model, cfg.merge_dim, cfg.grid) if cfg.merge_dim else None

    def forward(self, images):  # images: (B, 3, H, W) floats in [0, 1]
        x = self.patch(images * 2 - 1)  # (B, d, g, g); inputs centred on 0
        x = x.flatten(2).transpose(1, 2) + self.pos  # (B, N, d), N = g*g in row-major order
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if self.merger is not None:
            x = self.merger(x)  # (B, N/4, merge_dim)
        return x, x.mean(1)  # tokens (B, N or N/4, width), pooled (B, width)


# ----------------------------------------------------------------------------- image loading

def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Any picture Pillow reads -> (3, size, size) uint8. Grayscale, palette and CMYK become RGB;
    transparent pixels are laid on white; non-square pictures are centre-cropped, then resized.
    Raises UserError naming the file if it is missing or not a readable picture."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im)
            im = im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__}); replace or remove it") from None
    w, h = im.size
    if (w, h) != (size, size):
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        im = im.resize((size, size), Image.BICUBIC)
    return torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


def load_image_manifest(path: str | Path, size: int) -> tuple[list[dict], torch.Tensor]:
    """Read a JSON-lines manifest ({"image": path relative to the manifest, "caption": ...}) and
    all its pictures. Returns the usable records and their pictures, (n, 3, size, size) uint8.
    Bad lines and unreadable pictures are skipped, counted and reported, never silently dropped;
    if nothing is usable, it is a UserError. The decoded pictures are cached beside the manifest
    (.cache/NAME_SIZE.npy, memory-mapped), so only the first run decodes them."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found (make the data first, e.g. `python -m omni.shapes "
                        f"--out {path.parent}`)")
    cache = path.parent / ".cache"
    pixels, index = cache / f"{path.stem}_{size}.npy", cache / f"{path.stem}_{size}.json"
    stamp = [path.stat().st_mtime_ns, path.stat().st_size]  # a rewritten manifest invalidates the cache
    if index.is_file() and pixels.is_file():
        saved = json.loads(index.read_text())
        if saved["stamp"] == stamp:
            _report(path, saved["skipped"])
            return saved["records"], torch.from_numpy(np.load(pixels, mmap_mode="c"))
    records, images, skipped = [], [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("image"), str) or \
                    not isinstance(rec.get("caption"), str):
                raise ValueError("needs string fields 'image' and 'caption'")
            images.append(load_image(path.parent / rec["image"], size))
            records.append(rec)
        except (ValueError, UserError) as e:
            skipped.append(f"line {n}: {e}")
    _report(path, skipped)
    if not records:
        raise UserError(f"{path}: no usable lines (each needs 'image' and 'caption'; see the first skip above)")
    images = torch.stack(images)
    cache.mkdir(exist_ok=True)
    tmp = f".{os.getpid()}.tmp"  # one per process: under torchrun every rank computes the same cache
    with open(f"{pixels}{tmp}", "wb") as f:  # temporary file, then rename: never a half cache
        np.save(f, images.numpy())
    os.replace(f"{pixels}{tmp}", pixels)
    atomic_write_text(json.dumps({"stamp": stamp, "skipped": skipped, "records": records}), Path(index))
    return records, images


def _report(path: Path, skipped: list[str]) -> None:
    if skipped:
        print(f"{path}: skipped {len(skipped)} bad line(s); first: {skipped[0]}")

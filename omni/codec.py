"""The speech codec: 100 Hz log-mel -> 25 Hz discrete codes (RVQ) -> 100 Hz log-mel.

This is what turns speech into tokens a Talker can write, and its tokens back into speech. The
design follows the neural audio codecs (SoundStream, EnCodec, Mimi) in miniature, but works on
the stage B log-mel features instead of the waveform, so a waveform comes from a vocoder
(`omni/griffin_lim.py`):

    mel (B, T, 80) at 100 Hz
      -> encoder: a convolution, residual blocks, two stride-2 convolutions (100 -> 50 -> 25 Hz)
      -> latents (B, T/4, code_dim) -> RVQ: codes (B, T/4, K), K codebooks of C entries
      -> decoder: residual blocks, two stride-2 transposed convolutions (25 -> 50 -> 100 Hz)
      -> mel (B, T, 80)

The decoder matters: averaging log-mel to 25 Hz and repeating it back costs the stage B
recogniser about 10 CER points (docs: SPEECH_FACTS), because the 100 Hz detail (bursts,
transitions) is what tells consonants apart. A learned upsampler restores much of it from the
codes. Bitrate = 25 frames/s x K x log2(C) bits; 4 x 256 gives 800 bits/s.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.checkpoint import load_stage_checkpoint
from omni.config import UserError, from_dict
from omni.rvq import ResidualVQ, usage

HOP = 4  # mel frames per code frame: 100 Hz -> 25 Hz


@dataclass
class CodecConfig:
    n_mels: int = 80  # log-mel bands in and out (must match the front end)
    channels: int = 192  # convolution channels in the encoder and decoder
    n_res: int = 2  # residual blocks at each of the three rates (100, 50, 25 Hz)
    code_dim: int = 64  # size of the latent vectors that the RVQ quantizes
    n_codebooks: int = 4  # K: RVQ codebooks (codes per 40 ms frame)
    codebook_size: int = 256  # C: entries per codebook (log2(C) bits each)
    ema_decay: float = 0.99  # EMA decay of the codebook updates
    kmeans_iters: int = 10  # Lloyd iterations of the k-means initialisation on the first batch
    dead_threshold: float = 0.5  # restart a code whose EMA count (vectors per batch) falls below this
    quantizer_dropout: float = 0.5  # share of training examples that use only the first n ~ U{1..K} codebooks
    commit_weight: float = 0.25  # weight of the commitment loss
    l2_weight: float = 1.0  # weight of the L2 term next to the L1 mel loss

    def __post_init__(self):
        if self.n_codebooks < 1 or self.codebook_size < 2:
            raise ValueError("CodecConfig.n_codebooks must be >= 1 and CodecConfig.codebook_size >= 2")
        if not 0 <= self.quantizer_dropout <= 1 or not 0 < self.ema_decay < 1:
            raise ValueError("CodecConfig.quantizer_dropout must be in [0, 1] and ema_decay in (0, 1)")


class ResBlock(nn.Module):
    """x + conv(gelu(conv(gelu(x)))), kernel 3; the first conv dilated to see further at no cost."""

    def __init__(self, ch: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Conv1d(ch, ch, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ch, T) -> (B, ch, T)
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


def res_stack(ch: int, n: int) -> list[nn.Module]:
    return [ResBlock(ch, 3 ** (j % 3)) for j in range(n)]  # dilations 1, 3, 9, 1, ...


class Codec(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.encoder = nn.Sequential(
            nn.Conv1d(cfg.n_mels, ch, 3, padding=1), *res_stack(ch, cfg.n_res),  # 100 Hz
            nn.Conv1d(ch, ch, 4, stride=2, padding=1), *res_stack(ch, cfg.n_res),  # 50 Hz
            nn.Conv1d(ch, ch, 4, stride=2, padding=1), *res_stack(ch, cfg.n_res),  # 25 Hz
            nn.GELU(), nn.Conv1d(ch, cfg.code_dim, 1))
        self.rvq = ResidualVQ(cfg.code_dim, cfg.n_codebooks, cfg.codebook_size, cfg.ema_decay,
                              cfg.kmeans_iters, cfg.dead_threshold, cfg.quantizer_dropout)
        self.decoder = nn.Sequential(
            nn.Conv1d(cfg.code_dim, ch, 3, padding=1), *res_stack(ch, cfg.n_res),  # 25 Hz
            nn.ConvTranspose1d(ch, ch, 4, stride=2, padding=1), *res_stack(ch, cfg.n_res),  # 50 Hz
            nn.ConvTranspose1d(ch, ch, 4, stride=2, padding=1), *res_stack(ch, cfg.n_res),  # 100 Hz
            nn.GELU(), nn.Conv1d(ch, cfg.n_mels, 3, padding=1))

    @property
    def bitrate(self) -> float:
        """Bits per second of speech: 25 code frames a second, K x log2(C) bits each."""
        return 100 / HOP * self.rvq.bits_per_frame

    def latents(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels) with T a multiple of 4 -> (B, T / 4, code_dim)."""
        if mel.shape[1] % HOP:
            raise ValueError(f"mel length {mel.shape[1]} is not a multiple of {HOP}: pad it first (pad_mel)")
        return self.encoder(mel.transpose(1, 2)).transpose(1, 2)

    def decode_latents(self, q: torch.Tensor) -> torch.Tensor:
        """(B, T', code_dim) -> (B, 4 T', n_mels)."""
        return self.decoder(q.transpose(1, 2)).transpose(1, 2)

    def forward(self, mel: torch.Tensor, n_codebooks: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Reconstruction (B, T, n_mels), codes (B, T / 4, n) and the RVQ extras (commit loss, restarts)."""
        q, codes, extra = self.rvq(self.latents(mel), n_codebooks)
        return self.decode_latents(q), codes, extra

    @torch.no_grad()
    def encode(self, mel: torch.Tensor, n_codebooks: int | None = None) -> torch.Tensor:
        """(B, T, n_mels) -> codes (B, T / 4, K) long. Under no_grad the codebooks never learn."""
        return self.rvq(self.latents(mel), n_codebooks)[1]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, T', n) of the first n <= K codebooks -> mel (B, 4 T', n_mels)."""
        return self.decode_latents(self.rvq.decode_codes(codes))


def pad_mel(mel: torch.Tensor) -> torch.Tensor:
    """(T, n_mels) -> (ceil(T / 4) * 4, n_mels), the last frame repeated. The last code frame of a clip
    then holds the sound the clip ends on. Padding with silence instead taught the Talker to end every
    answer in a sudden drop to the floor, which the recogniser heard as a "t" ("blue" -> "bluet")."""
    extra = -len(mel) % HOP
    return torch.cat([mel, mel[-1:].expand(extra, mel.shape[1])]) if extra else mel


@torch.no_grad()
def reconstruct(codec: Codec, mels: list[torch.Tensor], n_codebooks: int | None = None,
                batch: int = 32) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Clips of (T_i, n_mels) through the codec: reconstructions (T_i, n_mels) and codes (ceil(T_i/4), n).
    Clips are padded with silence to the longest of their batch (sorted by length: little padding)."""
    device = next(codec.parameters()).device
    order = sorted(range(len(mels)), key=lambda i: len(mels[i]))
    recon, codes = [None] * len(mels), [None] * len(mels)
    for j in range(0, len(order), batch):
        ids = order[j: j + batch]
        longest = max(len(pad_mel(mels[i])) for i in ids)
        x = torch.stack([torch.cat([m, m.min().expand(longest - len(m), m.shape[1])])
                         for m in (mels[i] for i in ids)]).to(device)  # (b, longest, n_mels)
        c = codec.encode(x, n_codebooks)  # (b, longest / 4, n)
        y = codec.decode(c).float().cpu()
        for r, i in enumerate(ids):
            recon[i] = y[r, : len(mels[i])]
            codes[i] = c[r, : -(-len(mels[i]) // HOP)].cpu()
    return recon, codes


def load_codec(path: str) -> Codec:
    """The codec of a stage D codec checkpoint (its "config" and "model"), in eval mode on the CPU."""
    state = load_stage_checkpoint(path, "D-codec")
    if "codec" not in state.get("config", {}) or not any(k.startswith("rvq.") for k in state.get("model", {})):
        raise UserError(f"{path}: not a codec checkpoint (train one with "
                        "`python train_talker.py --config configs/codec_tiny.json`)")
    cfg = from_dict(CodecConfig, state["config"]["codec"], f"{path} (codec config)")
    codec = Codec(cfg)
    codec.load_state_dict(state["model"])
    return codec.eval()



@torch.no_grad()
def codec_metrics(codec: Codec, mels: list[torch.Tensor], prefix: str) -> tuple[dict, list[torch.Tensor]]:
    """Held-out quality of the codec on (T_i, n_mels) clips: mean absolute log-mel error with all K
    codebooks (`{prefix}_l1`) and with the first n < K (`{prefix}_l1_{n}cb`), and per codebook
    the perplexity of the codes used (`ppl_k`, C at best) and the codes never used (`dead_k`).
    Returns the metrics and the full-K reconstructions."""
    K, frames = codec.cfg.n_codebooks, sum(len(m) for m in mels)
    out, full = {}, None
    for n in range(K, 0, -1):
        recon, codes = reconstruct(codec, mels, n)
        err = sum(float((r - m).abs().sum()) for r, m in zip(recon, mels)) / (frames * mels[0].shape[1])
        out[f"{prefix}_l1" if n == K else f"{prefix}_l1_{n}cb"] = err
        if n == K:
            full = recon
            ppl, dead = usage(torch.cat(codes), codec.cfg.codebook_size)
            out.update({f"ppl_{k + 1}": p for k, p in enumerate(ppl)})
            out.update({f"dead_{k + 1}": d for k, d in enumerate(dead)})
    return out, full

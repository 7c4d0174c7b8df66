"""The audio front end: waveform -> log-mel features, computed once per data set and cached.

Settings follow Whisper (Radford et al. 2022, https://arxiv.org/abs/2212.04356): 16 kHz audio,
25 ms Hann windows (n_fft 400) every 10 ms (hop 160), 80 mel bands on the Slaney mel scale with
Slaney area normalisation (what librosa and Whisper use), log10 of the power clamped at 1e-10,
then Whisper's normalisation: floor at (max - 8), then (x + 4) / 4, which puts values near -1..1.
One second of audio gives exactly 100 frames: the STFT is centred (reflect padding), which gives
N // hop + 1 frames, and like Whisper we drop the last one.

Data sets are JSON-lines manifests (audio path relative to the manifest, text, speaker, duration).
`load_speech_set` reads one, computes the features of every clip once and keeps them in a cache
file beside the manifest, keyed by a hash of the front-end settings and the manifest's bytes, so
later epochs and later runs read features instead of audio. Unreadable or empty audio and texts
with characters outside the vocabulary are counted and reported in one line, never dropped
silently; a set where nothing is usable is a `UserError`.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from omni.checkpoint import atomic_save
from omni.config import UserError
from omni.paths import repo_path


@dataclass
class FrontEndConfig:
    sample_rate: int = 16000  # Hz; audio at another rate is resampled on load
    n_fft: int = 400  # STFT window and FFT size in samples (25 ms at 16 kHz)
    hop_length: int = 160  # samples between frames (10 ms: 100 frames per second)
    n_mels: int = 80  # mel bands (feature size per frame)


# ---------------------------------------------------------------------------------------------
# Resampling: band-limited (windowed-sinc) interpolation, as a strided convolution.


@lru_cache(maxsize=8)
def _sinc_kernels(orig: int, new: int, zeros: int, rolloff: float) -> tuple[np.ndarray, int]:
    """The (new, K) table of low-pass kernels, one per output phase, and the half-width in inputs."""
    cutoff = min(orig, new) * rolloff  # low-pass cutoff in cycles per block of `orig` inputs
    width = math.ceil(zeros * orig / cutoff)  # kernel half-width in input samples
    offsets = np.arange(-width, width + orig) / orig  # (K,) input positions, in blocks
    t = (offsets[None, :] - np.arange(new)[:, None] / new) * cutoff  # (new, K), in zero crossings
    t = np.clip(t, -zeros, zeros)
    kernels = np.sinc(t) * np.cos(t * np.pi / zeros / 2) ** 2 * cutoff / orig  # sinc x Hann window
    return kernels.astype(np.float32), width


def resample(wav: np.ndarray, orig_sr: int, new_sr: int, zeros: int = 16,
             rolloff: float = 0.945) -> np.ndarray:
    """Resample a (N,) float waveform from `orig_sr` to `new_sr` Hz.

    Output sample j sits at input time j * orig / new; it is the input convolved with a low-pass
    sinc (cutoff `rolloff` x the lower Nyquist frequency) tapered by a Hann window `zeros`
    zero-crossings wide. After dividing both rates by their gcd, the pattern of fractional
    offsets repeats every `new` outputs (`orig` inputs), so one (new, K) table of kernels covers
    every output: each block of `orig` inputs gives `new` outputs with one matrix product (the
    polyphase trick). Quality, 22,050 -> 16,000 Hz: a 7 kHz tone loses 0.5 dB, a 9 kHz one (above
    the new Nyquist) is attenuated by about 55 dB; tests/test_audio.py checks level and aliasing.
    """
    wav = np.asarray(wav, dtype=np.float32)
    if orig_sr == new_sr or len(wav) == 0:
        return wav  # (an empty clip stays empty; loaders count it as broken)
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    kernels, width = _sinc_kernels(orig, new, zeros, rolloff)
    n_out = math.ceil(new * len(wav) / orig)
    n_blocks = math.ceil(n_out / new)
    x = np.pad(wav, (width, width + n_blocks * orig))  # zeros before and after the signal
    blocks = np.lib.stride_tricks.sliding_window_view(x, kernels.shape[1])[: n_blocks * orig: orig]  # (B, K)
    return (kernels @ blocks.T).T.reshape(-1)[:n_out]  # (new, B) -> (B, new) -> (N_out,)


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Read any soundfile format as mono float32 at `sample_rate`, shape (N,)."""
    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    return resample(wav.mean(axis=1), sr, sample_rate)  # stereo -> mono by averaging


# ---------------------------------------------------------------------------------------------
# Log-mel features.


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> torch.Tensor:
    """Triangular filters on the Slaney mel scale, area-normalised: (n_mels, n_fft // 2 + 1)."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27  # linear < 1 kHz, log above

    def hz_to_mel(f):
        return torch.where(f < min_log_hz, f / f_sp, min_log_hz / f_sp + torch.log(f / min_log_hz) / logstep)

    def mel_to_hz(m):
        return torch.where(m < min_log_hz / f_sp, m * f_sp,
                           min_log_hz * torch.exp(logstep * (m - min_log_hz / f_sp)))

    fft_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    top = hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))
    edges = mel_to_hz(torch.linspace(0, float(top), n_mels + 2, dtype=torch.float64))  # (n_mels + 2,)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (fft_hz - lo) / (mid - lo), (hi - fft_hz) / (hi - mid)
    tri = torch.clamp(torch.minimum(rising, falling), min=0)
    return (tri * 2.0 / (hi - lo)).float()  # Slaney norm: every filter has the same area


def log_mel(wav: torch.Tensor | np.ndarray, cfg: FrontEndConfig = FrontEndConfig()) -> torch.Tensor:
    """(N,) waveform -> (N // hop_length, n_mels) normalised log-mel features."""
    wav = torch.as_tensor(wav, dtype=torch.float32)
    window = torch.hann_window(cfg.n_fft)  # periodic Hann, as in Whisper
    spec = torch.stft(wav, cfg.n_fft, cfg.hop_length, window=window, center=True, pad_mode="reflect",
                      return_complex=True)  # (n_fft // 2 + 1, N // hop + 1)
    power = spec[:, :-1].abs() ** 2  # drop the last frame: 1 s -> 100 frames
    mel = mel_filterbank(cfg.n_mels, cfg.n_fft, cfg.sample_rate) @ power  # (n_mels, T)
    logmel = torch.clamp(mel, min=1e-10).log10()
    logmel = torch.maximum(logmel, logmel.max() - 8.0)  # 80 dB dynamic range below the loudest bin
    return ((logmel + 4.0) / 4.0).t().contiguous()  # (T, n_mels)


# ---------------------------------------------------------------------------------------------
# Manifests and the feature cache.


def read_manifest(path: Path) -> list[dict]:
    """JSON lines with at least `audio` (relative to the manifest's folder) and `text`."""
    if not path.is_file():
        raise UserError(f"manifest {path} not found: build it with `python -m omni.speech_data` "
                        "or `python -m omni.librispeech`")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object"
                            ) from None
        if not isinstance(row, dict) or "audio" not in row or "text" not in row:
            raise UserError(f"{path}:{n}: each line needs the keys 'audio' and 'text'")
        rows.append(row)
    return rows


@dataclass
class SpeechSet:
    """The usable clips of one manifest; features live in one (total frames, n_mels) float16 tensor."""

    feats: torch.Tensor  # (sum of T_i, n_mels) float16, clips back to back
    offsets: list[int]  # clip i is feats[offsets[i] : offsets[i] + lengths[i]]
    lengths: list[int]  # frames per clip (100 per second)
    texts: list[str]
    speakers: list[str]
    sources: list[str]  # the manifest's optional "source" (kind of sentence), "" when absent

    def __len__(self) -> int:
        return len(self.texts)

    def features(self, i: int) -> torch.Tensor:
        return self.feats[self.offsets[i]: self.offsets[i] + self.lengths[i]].float()  # (T_i, n_mels)

    def hours(self) -> float:
        return sum(self.lengths) / 100 / 3600


def _compute(path: Path, rows: list[dict], cfg: FrontEndConfig) -> dict:
    """Features of every readable clip in `rows`; unreadable and empty ones are counted."""
    feats, keep, broken = [], [], []
    for i, row in enumerate(rows):
        try:
            wav = load_audio(path.parent / row["audio"], cfg.sample_rate)
        except Exception:  # missing file, not audio, truncated: libsndfile says which, we count it
            broken.append(row["audio"])
            continue
        if len(wav) < cfg.n_fft or not np.isfinite(wav).all():  # empty, shorter than one window, or NaN
            broken.append(row["audio"])
            continue
        feats.append(log_mel(wav, cfg).half())
        keep.append(i)
    return {"feats": torch.cat(feats) if feats else torch.zeros(0, cfg.n_mels, dtype=torch.float16),
            "lengths": [len(f) for f in feats], "keep": keep, "broken": broken}


def load_speech_set(manifest: str | Path, cfg: FrontEndConfig = FrontEndConfig(),
                    valid_text: Callable[[str], bool] = lambda s: True, cache: bool = True) -> SpeechSet:
    """Features, texts and speakers of a manifest, from the cache when it is up to date."""
    path = repo_path(manifest)
    rows = read_manifest(path)
    key = hashlib.sha1(json.dumps(asdict(cfg), sort_keys=True).encode() + path.read_bytes()).hexdigest()[:12]
    cache_file = path.parent / ".cache" / f"{path.stem}-{key}.pt"
    if cache and cache_file.is_file():
        data = torch.load(cache_file, weights_only=True)
    else:
        data = _compute(path, rows, cfg)
        if cache:
            cache_file.parent.mkdir(exist_ok=True)
            atomic_save(data, cache_file)  # a killed run never leaves half a cache; torchrun ranks may all write it
    offsets = np.concatenate([[0], np.cumsum(data["lengths"])[:-1]]).astype(int).tolist()
    ok = [j for j, i in enumerate(data["keep"]) if valid_text(rows[i]["text"])]  # j: among readable clips
    n_bad_text = len(data["keep"]) - len(ok)
    kept = [rows[data["keep"][j]] for j in ok]
    out = SpeechSet(data["feats"], [offsets[j] for j in ok], [data["lengths"][j] for j in ok],
                    [r["text"] for r in kept], [str(r.get("speaker", "")) for r in kept],
                    [str(r.get("source", "")) for r in kept])
    example = f" (e.g. {data['broken'][0]})" if data["broken"] else ""
    print(f"{manifest}: {len(out)} of {len(rows)} clips usable, {out.hours():.2f} h; skipped "
          f"{len(data['broken'])} unreadable/empty audio{example}, {n_bad_text} with characters "
          f"outside the vocabulary")
    if len(out) == 0:
        raise UserError(f"{manifest}: no usable clip (all {len(rows)} unreadable, empty or out of "
                        "vocabulary); check the audio paths and rebuild the data set")
    return out


# ---------------------------------------------------------------------------------------------
# Augmentation on cached features (so the cache still pays off) and padding into a batch.


def augment(x: torch.Tensor, gen: torch.Generator, speed: float = 0.0, warp: float = 0.0,
            freq_masks: int = 0, freq_width: int = 0, time_masks: int = 0,
            time_width: int = 0) -> torch.Tensor:
    """A randomly changed copy of one clip's (T, n_mels) features; every draw comes from `gen`.

    speed: resample the time axis by a factor in [1 - speed, 1 + speed]: faster or slower talk.
    warp:  stretch the mel axis by a factor in [1 - warp, 1 + warp]: a linear warp of the mel
           bands that moves formants and pitch together, roughly a longer or shorter vocal tract
           (VTLP, Jaitly & Hinton 2013). It is what tells voices apart most, so it matters most
           for voices never heard in training.
    SpecAugment (Park et al. 2019, https://arxiv.org/abs/1904.08779): set `freq_masks` bands of
    up to `freq_width` mels and `time_masks` spans of up to `time_width` frames to the clip mean.
    """
    def uniform(a: float, b: float) -> float:
        return a + (b - a) * torch.rand((), generator=gen).item()

    T, n_mels = x.shape
    if speed > 0:
        new_T = max(4, round(T / uniform(1 - speed, 1 + speed)))
        x = F.interpolate(x.t()[None], size=new_T, mode="linear", align_corners=False)[0].t()
    if warp > 0:  # output band m reads input band m / factor (linear interpolation, edge clamped)
        src = (torch.arange(n_mels, dtype=torch.float32) / uniform(1 - warp, 1 + warp)).clamp(max=n_mels - 1)
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=n_mels - 1)
        frac = src - lo
        x = x[:, lo] * (1 - frac) + x[:, hi] * frac
    x = x.clone()
    fill = x.mean()
    for _ in range(freq_masks):
        w = int(torch.randint(0, freq_width + 1, (), generator=gen))
        f0 = int(torch.randint(0, max(1, n_mels - w), (), generator=gen))
        x[:, f0: f0 + w] = fill
    for _ in range(time_masks):
        w = min(int(torch.randint(0, time_width + 1, (), generator=gen)), len(x) // 5)  # never most of a clip
        t0 = int(torch.randint(0, max(1, len(x) - w), (), generator=gen))
        x[t0: t0 + w] = fill
    return x


def pad_batch(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """B clips of (T_i, n_mels) -> zero-padded (B, max T_i, n_mels) and lengths (B,)."""
    lengths = torch.tensor([len(f) for f in feats])
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths


def plot_features(wav_path: str | Path, out_png: str | Path, title: str = "") -> Path:
    """Waveform above its log-mel features, as in chapters/03_audio_features.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wav = load_audio(repo_path(wav_path))
    feats = log_mel(wav).numpy()  # (T, n_mels)
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 4.8), sharex=True, gridspec_kw={"height_ratios": [1, 2]},
                               layout="constrained")
    a.plot(np.arange(len(wav)) / 16000, wav, lw=0.4)
    a.set_ylabel("amplitude")
    a.set_title(title or str(wav_path), fontsize=10)
    im = b.imshow(feats.T, origin="lower", aspect="auto", extent=(0, len(feats) / 100, 0, feats.shape[1]))
    b.set_xlabel("time (s): 100 frames per second")
    b.set_ylabel("mel band")
    fig.colorbar(im, ax=b, label="normalised log10 power")
    out = repo_path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (3, 4):
        raise SystemExit("usage: python -m omni.audio CLIP.wav OUT.png [TITLE]")
    print(plot_features(*sys.argv[1:]))

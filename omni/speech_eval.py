"""The shared measurement of stage D's speech: log-mel -> Griffin-Lim -> the judge -> CER.

Both the codec and the Talker produce log-mel features; this module turns them into waveforms
(omni/griffin_lim.py), has the stage B recogniser transcribe them (omni/recogniser.py) and
scores the transcripts against the intended texts (CER and WER, omni/metrics.py). It also writes
a few wavs and a figure of spectrograms, predicted next to original, into the run directory, so
a learner can listen to and look at what the numbers mean.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from omni.audio import FrontEndConfig
from omni.griffin_lim import mel_to_wav
from omni.metrics import cer, wer
from omni.recogniser import Recogniser


def vocode(mels: list[torch.Tensor], cfg: FrontEndConfig, n_iter: int = 48,
           inverse_iters: int = 30) -> list[np.ndarray]:
    """(T_i, n_mels) normalised log-mel clips -> float32 waveforms at cfg.sample_rate."""
    return [mel_to_wav(m, cfg, n_iter, inverse_iters=inverse_iters) for m in mels]


def judge_speech(judge: Recogniser, mels: list[torch.Tensor], texts: list[str], n_iter: int = 48,
                 vocoder: bool = True, inverse_iters: int = 30) -> dict:
    """Intelligibility of log-mel clips: the judge's CER and WER against `texts`, its transcripts
    ("hyps") and the waveforms ("wavs"). vocoder=False transcribes the features directly (the
    judge hears the mel as it is, with no Griffin-Lim in between)."""
    if vocoder:
        wavs = vocode(mels, judge.front_end, n_iter, inverse_iters)
        hyps = judge.transcribe(wavs, judge.front_end.sample_rate)
    else:
        wavs, hyps = [], judge.transcribe_features(mels)
    return {"cer": cer(texts, hyps), "wer": wer(texts, hyps), "hyps": hyps, "wavs": wavs}


def plot_mels(path: str | Path, rows: list[list[tuple[str, torch.Tensor]]], title: str = "") -> Path:
    """A grid of log-mel spectrograms: one list of (label, (T, n_mels) mel) per row, shared time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = max(len(r) for r in rows)
    longest = max(len(m) for r in rows for _, m in r) / 100
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(3.6 * n_cols, 2.0 * len(rows) + 0.4), squeeze=False,
                             layout="constrained")
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            if j >= len(row):
                ax.axis("off")
                continue
            label, mel = row[j]
            ax.imshow(mel.float().t().numpy(), origin="lower", aspect="auto", vmin=-1, vmax=1.5,
                      extent=(0, len(mel) / 100, 0, mel.shape[1]))
            ax.set_xlim(0, longest)
            ax.set_title(label, fontsize=8)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("mel band", fontsize=8)
            if i == len(rows) - 1:
                ax.set_xlabel("time (s)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_samples(out_dir: str | Path, prefix: str, texts: list[str], hyps: list[str], wavs: list[np.ndarray],
                  pred_mels: list[torch.Tensor], ref_mels: list[torch.Tensor], sample_rate: int = 16000,
                  n: int = 3) -> list[Path]:
    """The first n clips as `{prefix}_{i}.wav` and one figure `{prefix}_spectrograms.png` with the
    original log-mel next to the predicted one (and what the judge heard) for each."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, wav in enumerate(wavs[:n]):
        paths.append(out_dir / f"{prefix}_{i}.wav")
        sf.write(paths[-1], wav, sample_rate)
    rows = [[(f"original: {texts[i][:48]}", ref_mels[i]), (f"{prefix} -> judge: {hyps[i][:48]}", pred_mels[i])]
            for i in range(min(n, len(pred_mels)))]
    if rows:
        paths.append(plot_mels(out_dir / f"{prefix}_spectrograms.png", rows))
    return paths

"""How well the Talker speaks, on held-out sentences it never trained on.

Two kinds of measurement:
- teacher-forced: the Talker sees the true codes of earlier frames and the true word track, and
  we count how often its most likely code is the codec's code, per codebook, and how far its
  predicted word durations are from eSpeak's (frames). Cheap, and it moves at every step of training.
- free generation: the Talker speaks each sentence on its own (its own codes, its own word
  durations), as `python -m omni.say` does. We count the share of sentences that end by
  themselves within max_len_ratio x the original's length, the duration ratio against eSpeak's
  original, the real-time factor, and the stage B recogniser's CER on the Talker's speech
  (codes -> codec decoder -> Griffin-Lim -> judge) next to its CER on the eSpeak original of the
  same sentences through the same vocoder, and on the codec's own codes of those clips decoded
  (what a perfect Talker would reach with this codec). The judge only listens: nothing trains
  against it.
"""
from __future__ import annotations

import time

import torch

from omni.codec import HOP, Codec
from omni.speech_eval import judge_speech
from omni.talker import Talker, generate, talker_loss
from omni.talker_data import FRAME_RATE, TalkerSet, collate

FIELDS = ("tokens", "tok_word", "n_words", "codes", "frame_word", "frame_pos", "durations")


def in_batches(ids: list[int], lengths: list[int], size: int) -> list[list[int]]:
    """ids sorted by length, cut into batches of `size` (little padding)."""
    order = sorted(ids, key=lambda k: lengths[k])
    return [order[j: j + size] for j in range(0, len(order), size)]


@torch.no_grad()
def teacher_forced(model: Talker, s: TalkerSet, ids: list[int], batch: int = 32) -> dict:
    """Loss, accuracies per codebook and word-duration error of held-out clips `ids`, weighted by frames."""
    device = next(model.parameters()).device
    sums, frames = {}, 0
    for part in in_batches(ids, s.lengths, batch):
        b = {k: v.to(device) for k, v in collate(s, part).items()}
        loss, stats = talker_loss(*model(*(b[k] for k in FIELDS)), b, model.cfg)
        n = int(b["mask"].sum())
        for k, v in {"loss": loss, **stats}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        frames += n
    return {k: v / frames for k, v in sums.items() if k != "dur_mse"}


@torch.no_grad()
def free_generation(model: Talker, codec: Codec, s: TalkerSet, ids: list[int], judge=None, gl_iters: int = 48,
                    batch: int = 32, seed: int = 0, reference: dict | None = None) -> dict:
    """Speak clips `ids` from their text alone. Returns the metrics and, under "samples", the
    first clips' texts, predicted and original mels and what the judge heard (for wavs and figures).
    reference: a dict kept by the caller between evaluations, holding the judge's CER on the originals
    (the same at every evaluation, so it is computed once)."""
    device = next(model.parameters()).device  # the Talker speaks where it trains; the codec decodes on the CPU
    g = torch.Generator(device).manual_seed(seed)  # the same draws at every evaluation: curves show the model, not luck
    mels, lengths, ended, seconds = {}, {}, {}, 0.0
    for part in in_batches(ids, s.lengths, batch):
        b = {k: v.to(device) for k, v in collate(s, part).items()}
        cap = (model.cfg.max_len_ratio * b["mask"].sum(1).float()).long()  # (B,) frames allowed
        t0 = time.time()
        out = generate(model, b["tokens"], b["tok_word"], b["n_words"], cap, g)
        out = {k: v.cpu() for k, v in out.items()}
        seconds += time.time() - t0
        for r, k in enumerate(part):
            n = int(out["lengths"][r])
            lengths[k], ended[k] = n, bool(out["ended"][r])
            mels[k] = codec.decode(out["codes"][r: r + 1, :n])[0] if n else torch.zeros(HOP, codec.cfg.n_mels)
    ratios = torch.tensor([lengths[k] / len(s.codes[k]) for k in ids])
    speech_seconds = sum(lengths.values()) / FRAME_RATE
    out = {"ended": sum(ended.values()) / len(ids), "dur_ratio": ratios.mean().item(),
           "dur_ratio_min": ratios.min().item(), "dur_ratio_max": ratios.max().item(),
           "rtf": seconds / max(speech_seconds, 1e-9)}
    texts = [s.texts[k] for k in ids]
    pred = [mels[k] for k in ids]
    hyps, wavs = [""] * len(ids), []
    if judge is not None:
        heard = judge_speech(judge, pred, texts, gl_iters)
        out.update(cer=heard["cer"], wer=heard["wer"])
        hyps, wavs = heard["hyps"], heard["wavs"]
        if reference is not None and "cer_original" not in reference:
            orig = judge_speech(judge, [s.mels[k] for k in ids], texts, gl_iters)
            # the codec's own codes of the same clips, decoded: the best the Talker can do with this codec
            resynth = judge_speech(judge, [codec.decode(s.codes[k][None])[0] for k in ids], texts, gl_iters)
            reference.update(cer_original=orig["cer"], wer_original=orig["wer"], cer_codec=resynth["cer"])
        out.update(reference or {})
    out["samples"] = {"texts": texts, "pred": pred, "orig": [s.mels[k] for k in ids], "hyps": hyps, "wavs": wavs}
    return out

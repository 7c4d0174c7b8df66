"""Stage B: the audio encoder learns to hear, by transcribing speech with CTC.

What it teaches: log-mel features; a Whisper-style encoder (a convolutional stem that takes 100
frames per second down to 25, then a transformer); the CTC loss, which trains a per-frame
character classifier without any alignment between audio and text; greedy CTC decoding; CER and
WER; and augmentation that helps with voices never heard in training. Stage E reuses this
encoder (without its CTC head) as the Thinker's ears.

    python -m omni.speech_data --out data/speech_tiny                     # the data, 1-2 minutes
    python train_audio_enc.py --config configs/audio_enc_tiny.json       # ~5 minutes on 2 CPU cores
    python train_audio_enc.py --config configs/audio_enc_tiny.json --resume auto
    python train_audio_enc.py --debug                                    # a few steps, seconds

The run directory (train.out_dir) holds checkpoints, log.jsonl, curves.png and metrics.json.
Features are cached beside each manifest (.cache/), so only the first run computes them.
Chapter: chapters/04_stage_b_audio_encoder.md.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F

from omni import config
from omni.audio import FrontEndConfig, SpeechSet, augment, load_speech_set, pad_batch
from omni.audio_encoder import AudioCTC, AudioEncoderConfig, CharVocab, ctc_greedy_decode
from omni.metrics import cer, wer
from omni.paths import repo_path
from omni.trainer import Task, TrainConfig, fit


@dataclass
class AudioDataConfig:
    train: str = "data/speech_tiny/train.jsonl"  # training manifest (relative to the repository root)
    val: str = "data/speech_tiny/val.jsonl"  # held-out sentences, voices heard in training
    test: str = "data/speech_tiny/test.jsonl"  # held-out sentences, voices never heard in training
    eval_clips: int = 0  # clips decoded per split at each evaluation (0 = all)
    eval_batch: int = 64  # clips per forward pass when evaluating
    samples: int = 3  # reference/hypothesis pairs printed from the test split at each evaluation
    bucket: int = 20  # batches per sorting pool: similar lengths share a batch, less padding
    sortagrad: bool = True  # first epoch from the shortest clips to the longest (CTC gets going sooner)
    speed: float = 0.1  # time-stretch by a factor in [1 - speed, 1 + speed] (0 = off)
    warp: float = 0.1  # stretch the mel axis by a factor in [1 - warp, 1 + warp] (0 = off)
    freq_masks: int = 2  # SpecAugment frequency masks per clip (0 = off)
    freq_width: int = 10  # widest frequency mask, in mel bands
    time_masks: int = 2  # SpecAugment time masks per clip (0 = off)
    time_width: int = 20  # widest time mask, in frames (10 ms each)

    def __post_init__(self):
        if not 0 <= self.speed < 1 or not 0 <= self.warp < 1:
            raise ValueError("data.speed and data.warp must be in [0, 1)")


@dataclass
class AudioStageConfig:
    data: AudioDataConfig = field(default_factory=AudioDataConfig)
    audio: FrontEndConfig = field(default_factory=FrontEndConfig)
    model: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/audio_enc_tiny"))


# --debug: the same code path with toy sizes, on a handful of clips.
DEBUG = {"model.d_model": 32, "model.n_layer": 1, "model.n_head": 2, "model.d_ff": 64,
         "data.eval_clips": 8, "data.eval_batch": 8, "data.samples": 1, "train.max_steps": 6,
         "train.batch_size": 4, "train.warmup_steps": 2, "train.eval_every": 3, "train.log_every": 2,
         "train.ckpt_every": 3, "train.out_dir": "runs/debug_audio", "train.overwrite": True}


def main(cfg: AudioStageConfig) -> dict:
    # 1. Config ------------------------------------------------------------------------------
    print(json.dumps(config.to_dict(cfg), indent=2))
    vocab = CharVocab()
    if cfg.model.vocab_size != len(vocab) or cfg.model.n_mels != cfg.audio.n_mels:
        raise config.UserError(f"model.vocab_size must be {len(vocab)} and model.n_mels must equal "
                               f"audio.n_mels ({cfg.audio.n_mels})")
    run_dir = repo_path(cfg.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    # 2. Data: cached log-mel features of three manifests ----------------------------------------
    sets = {name: load_speech_set(getattr(cfg.data, name), cfg.audio, vocab.is_valid)
            for name in ("train", "val", "test")}
    train_set, B = sets["train"], cfg.train.batch_size
    if len(train_set) < B:
        raise config.UserError(f"{cfg.data.train}: {len(train_set)} clips, fewer than train.batch_size ({B})")
    targets = [torch.tensor(vocab.encode(t)) for t in train_set.texts]

    @lru_cache(maxsize=1)
    def epoch_batches(epoch: int) -> list[list[int]]:
        """A shuffled order for one epoch (a pure function of seed and epoch); within pools of
        `bucket` batches the clips are sorted by length, then the batches are shuffled. With
        `sortagrad`, epoch 0 goes from short clips to long ones instead (Amodei et al. 2016,
        "Deep Speech 2"): short clips have few possible alignments, so CTC learns them first."""
        g = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
        order = torch.randperm(len(train_set), generator=g).tolist()
        if epoch == 0 and cfg.data.sortagrad:
            order.sort(key=lambda k: train_set.lengths[k])
            return [order[j: j + B] for j in range(0, len(order) - B + 1, B)]
        pool_size = B * cfg.data.bucket
        batches = []
        for p in range(0, len(order) - B + 1, pool_size):
            pool = sorted(order[p: p + pool_size], key=lambda k: train_set.lengths[k])
            batches += [pool[j: j + B] for j in range(0, len(pool) - B + 1, B)]
        return [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]

    per_epoch = len(train_set) // B  # full batches per epoch (both orders above make exactly this many)

    def get_batch(i: int):
        ids = epoch_batches(i // per_epoch)[i % per_epoch]
        g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + i)  # augmentation for batch i only
        d = cfg.data
        feats = [augment(train_set.features(k), g, d.speed, d.warp, d.freq_masks, d.freq_width,
                         d.time_masks, d.time_width) for k in ids]
        x, lengths = pad_batch(feats)
        ys = [targets[k] for k in ids]
        return x, lengths, torch.cat(ys), torch.tensor([len(y) for y in ys])

    # 3. Model -------------------------------------------------------------------------------
    torch.manual_seed(cfg.train.seed)
    model = AudioCTC(cfg.model)

    # 4. What trains: everything (encoder and CTC head) ------------------------------------------
    n_params = sum(p.numel() for p in model.parameters())
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    print(f"parameters: {n_params:,} trainable / {n_params:,} total ({n_enc:,} in the encoder)")

    def loss_fn(m, batch):
        x, lengths, ys, y_lengths = batch
        log_probs, out_lengths = m(x, lengths)  # (B, T', V), (B,)
        # CTC wants (T', B, V). zero_infinity: a clip too short for its transcript adds nothing.
        loss = F.ctc_loss(log_probs.transpose(0, 1), ys, out_lengths, y_lengths, blank=vocab.blank,
                          zero_infinity=True)
        return loss, {}

    def transcribe(m, s: SpeechSet, n: int) -> tuple[list[str], list[str], float]:
        """Greedy transcripts of the first n clips of a set, and their mean CTC loss."""
        device = next(m.parameters()).device
        order = sorted(range(n), key=lambda k: s.lengths[k])  # similar lengths: little padding
        hyps, nll = [""] * n, 0.0
        for j in range(0, n, cfg.data.eval_batch):
            ids = order[j: j + cfg.data.eval_batch]
            x, lengths = pad_batch([s.features(k) for k in ids])
            log_probs, out_lengths = m(x.to(device), lengths.to(device))
            ys = [torch.tensor(vocab.encode(s.texts[k])) for k in ids]
            nll += F.ctc_loss(log_probs.transpose(0, 1), torch.cat(ys).to(device), out_lengths,
                              torch.tensor([len(y) for y in ys], device=device), zero_infinity=True,
                              reduction="sum").item()
            for k, path in zip(ids, ctc_greedy_decode(log_probs, out_lengths, vocab.blank)):
                hyps[k] = vocab.decode(path)
        return s.texts[:n], hyps, nll / sum(len(t) for t in s.texts[:n])

    def evaluate(m):
        out, decoded = {}, {}
        for name in ("val", "test"):
            n = min(len(sets[name]), cfg.data.eval_clips or len(sets[name]))
            refs, hyps, loss = decoded[name] = transcribe(m, sets[name], n)
            out.update({f"{name}_cer": cer(refs, hyps), f"{name}_wer": wer(refs, hyps)})
            if name == "val":
                out["loss"] = loss  # CTC loss per reference character, on the validation set
        # The test split (voices never heard in training): CER per kind of sentence when the
        # manifest says (austen / world), and a few transcripts.
        refs, hyps, _ = decoded["test"]
        sources = sets["test"].sources[:len(refs)]
        kinds = sorted(set(sources) - {""})
        for kind in kinds if len(kinds) > 1 else []:
            pick = [k for k, src in enumerate(sources) if src == kind]
            out[f"test_cer_{kind}"] = cer([refs[k] for k in pick], [hyps[k] for k in pick])
        for k in range(min(cfg.data.samples, len(refs))):
            print(f"  test | ref: {refs[k]}\n       | hyp: {hyps[k]}")
        return out

    # 5. The loop ------------------------------------------------------------------------------
    task = Task(model, get_batch, loss_fn, evaluate, best_metric="val_cer", best_mode="min",
                count=lambda b: int(b[1].sum()), unit="frame", stage="B")
    final = fit(task, cfg.train, config.to_dict(cfg))

    # 6. Final evaluation and summary ------------------------------------------------------------
    final["params"] = n_params
    (run_dir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
    if "test_cer" in final:
        print(f"held-out: val CER {final['val_cer']:.2%} WER {final['val_wer']:.2%} | unseen voices: "
              f"test CER {final['test_cer']:.2%} WER {final['test_wer']:.2%} | {final['train_seconds']:.0f}s")
    return final


if __name__ == "__main__":
    config.run(main, AudioStageConfig, DEBUG)

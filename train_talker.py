"""Stage D: TinyOmni learns to speak. Two phases of one script, each with its own config and run.

Phase "codec": a speech codec learns to turn 100 Hz log-mel features into 25 Hz discrete codes
and back (a convolutional encoder, residual vector quantization with K codebooks, a decoder that
restores the 100 Hz detail); Griffin-Lim turns log-mel into a waveform. It is judged by mel
reconstruction error, bitrate, codebook usage and by the stage B recogniser's character error
rate on held-out image-world sentences: original clip, mel -> vocoder only, and the full codec.
Phase "talker": a Talker (a small autoregressive transformer) writes the frozen codec's codes from the
frozen Thinker's tokens, word by word along eSpeak's word timings, and predicts how long each word
lasts, so it knows by itself when a word and the sentence end. It is judged by teacher-forced code
accuracy, word-duration error and by free generation of held-out sentences: the share that end by
themselves, their duration, and the recogniser's CER.

    python -m omni.speech_data --out data/voice_tiny --voice en-us+m1    # one voice, 1-2 minutes
    python train_talker.py --config configs/codec_tiny.json              # the codec, ~2 minutes
    python train_talker.py --config configs/codec_tiny.json --resume auto
    python train_talker.py --config configs/talker_tiny.json             # then the Talker, ~4 minutes
    python -m omni.say runs/talker_tiny/best.pt "a small red circle at the top" --out hello.wav
    python train_talker.py --debug                                       # a few steps, seconds
    python train_talker.py --debug --phase=talker --train.out_dir=runs/debug_talker  # after the line above

The run directory holds checkpoints, log.jsonl, curves.png, metrics.json, and from the final
evaluation a few wavs (vocoder_*.wav: the original mel through Griffin-Lim; codec_*.wav: through
the codec too), their spectrograms and codebooks.png (reconstructions with 1, 2, ..., K codebooks);
a Talker run writes talker_*.wav and talker_spectrograms.png at every evaluation.
Chapters: chapters/06_speech_codec.md (the codec) and chapters/07_stage_d_talker.md (the Talker).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from omni import config
from omni.audio import FrontEndConfig, SpeechSet, load_speech_set
from omni.audio_encoder import CharVocab
from omni.codec import HOP, Codec, CodecConfig, codec_metrics, load_codec, reconstruct
from omni.griffin_lim import mel_to_wav
from omni.paths import repo_path
from omni.recogniser import load_recogniser
from omni.say import build_talker
from omni.speech_eval import judge_speech, plot_mels, write_samples
from omni.talker import Talker, TalkerConfig, talker_loss
from omni.talker_data import batch_order, collate, load_talker_set, phoneme_vocab
from omni.talker_eval import FIELDS, free_generation, teacher_forced
from omni.tokenizer import Tokenizer
from omni.trainer import Task, TrainConfig, fit


@dataclass
class VoiceDataConfig:
    train: str = "data/voice_tiny/train.jsonl"  # training manifest (one voice; relative to the repository root)
    val: str = "data/voice_tiny/val.jsonl"  # held-out sentences, never trained on
    test: str = "data/voice_tiny/test.jsonl"  # held-out sentences, mostly image-world ones
    judge: str = "runs/audio_enc_tiny/best.pt"  # stage B checkpoint that transcribes speech ("" = no CER)
    eval_source: str = "world"  # kind of held-out sentence evaluated ("world", "austen", "" = any)
    eval_clips: int = 80  # held-out clips per split at each evaluation (0 = all)
    crop: int = 160  # frames per training crop (100 per second; a multiple of 4)
    griffin_lim_iters: int = 48  # Griffin-Lim rounds when vocoding for the judge
    mel_inverse_iters: int = 30  # NNLS updates that undo the mel filterbank before Griffin-Lim (0 = pseudo-inverse)
    wavs: int = 3  # wavs (and spectrograms) written to the run directory at the end

    def __post_init__(self):
        if self.crop < 4 or self.crop % HOP:
            raise ValueError(f"VoiceDataConfig.crop must be a positive multiple of {HOP}, got {self.crop}")


@dataclass
class TalkerStageConfig:
    phase: str = "codec"  # "codec" (train the codec) or "talker" (train the Talker on a frozen codec's codes)
    data: VoiceDataConfig = field(default_factory=VoiceDataConfig)
    audio: FrontEndConfig = field(default_factory=FrontEndConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    talker: TalkerConfig = field(default_factory=TalkerConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/codec_tiny"))


# --debug: the same code path with toy sizes, on a handful of clips; no judge unless data.judge is given.
DEBUG = {"codec.channels": 32, "codec.n_res": 1, "codec.code_dim": 16, "codec.codebook_size": 16,
         "data.judge": "", "data.eval_clips": 6, "data.wavs": 2, "data.griffin_lim_iters": 4, "data.crop": 48,
         "train.max_steps": 6, "train.batch_size": 4, "train.warmup_steps": 2, "train.eval_every": 3,
         "train.log_every": 2, "train.ckpt_every": 3, "train.out_dir": "runs/debug_codec", "train.overwrite": True,
         "talker.codec": "runs/debug_codec/best.pt", "talker.d_model": 32, "talker.n_layer": 1, "talker.n_head": 2,
         "talker.text_layers": 1, "talker.depth_d_model": 32}


# ---------------------------------------------------------------------------------------------
# Phase "codec": what differs from the other phase, one function per section.


def held_out(s: SpeechSet, source: str, n: int) -> list[int]:
    """The first n clips of a held-out set whose sentence is of kind `source` (all when "")."""
    ids = [k for k in range(len(s)) if not source or s.sources[k] == source] or list(range(len(s)))
    return ids[: n or len(ids)]


def codec_task(cfg: TalkerStageConfig, sets: dict[str, SpeechSet], judge, model: Codec) -> Task:
    train_set, B, L = sets["train"], cfg.train.batch_size, cfg.data.crop
    d = cfg.data
    picks = {name: held_out(sets[name], d.eval_source, d.eval_clips) for name in ("val", "test")}
    mels = {name: [sets[name].features(k) for k in ids] for name, ids in picks.items()}
    texts = [sets["test"].texts[k] for k in picks["test"]]
    fixed = {}  # the judge on the original clips and on mel -> vocoder: the same at every evaluation

    def get_batch(i: int) -> torch.Tensor:
        """B random crops of L frames (B, L, n_mels): a pure function of i and the seed (exact resume).
        A clip shorter than L is padded with its quietest value (silence)."""
        g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + i)
        crops = []
        for k in torch.randint(len(train_set), (B,), generator=g).tolist():
            x = train_set.features(k)
            start = int(torch.randint(max(1, len(x) - L + 1), (), generator=g))
            x = x[start: start + L]
            crops.append(torch.cat([x, x.min().expand(L - len(x), x.shape[1])]))
        return torch.stack(crops)

    def loss_fn(m, x):
        y, _, extra = m(x)  # (B, L, n_mels)
        l1, l2 = (y - x).abs().mean(), ((y - x) ** 2).mean()
        loss = l1 + cfg.codec.l2_weight * l2 + cfg.codec.commit_weight * extra["commit"]
        return loss, {"l1": l1.detach(), "commit": extra["commit"].detach(), "restarts": extra["restarts"]}

    def evaluate(m):
        out = {k: v for k, v in codec_metrics(m, mels["val"], "val")[0].items() if not k.endswith("cb")}
        test, recon = codec_metrics(m, mels["test"], "test")
        out.update({k: v for k, v in test.items() if not k.startswith(("ppl", "dead"))})
        if judge is not None:
            if not fixed:
                fixed["cer_original"] = judge_speech(judge, mels["test"], texts, vocoder=False)["cer"]
                fixed["cer_vocoder"] = judge_speech(judge, mels["test"], texts, d.griffin_lim_iters,
                                                   inverse_iters=d.mel_inverse_iters)["cer"]
            out.update(fixed)
            through = judge_speech(judge, recon, texts, d.griffin_lim_iters, inverse_iters=d.mel_inverse_iters)
            out.update({"cer_codec": through["cer"], "wer_codec": through["wer"]})
        return out

    return Task(model, get_batch, loss_fn, evaluate, best_metric="val_l1", best_mode="min",
                count=lambda b: b.shape[0] * b.shape[1], unit="frame", stage="D-codec")


def codec_report(cfg: TalkerStageConfig, sets: dict[str, SpeechSet], judge, model: Codec, final: dict) -> None:
    """Final words of the codec phase: wavs, spectrograms and the 1..K codebook figure of the first
    held-out clips, then one summary line."""
    run_dir, d = repo_path(cfg.train.out_dir), cfg.data
    ids = held_out(sets["test"], d.eval_source, d.wavs)
    mels = [sets["test"].features(k) for k in ids]
    texts = [sets["test"].texts[k] for k in ids]
    model.eval()
    recon = reconstruct(model, mels)[0]
    if judge is not None:
        for prefix, pred in (("vocoder", mels), ("codec", recon)):
            r = judge_speech(judge, pred, texts, d.griffin_lim_iters, inverse_iters=d.mel_inverse_iters)
            write_samples(run_dir, prefix, texts, r["hyps"], r["wavs"], pred, mels, n=d.wavs)
    K = cfg.codec.n_codebooks
    rows = [[("original", m)] + [(f"{n} codebook{'s' * (n > 1)}", reconstruct(model, [m], n)[0][0])
                                 for n in range(1, K + 1)] for m in mels[:2]]
    plot_mels(run_dir / "codebooks.png", rows, f"{model.bitrate / K:.0f} bits/s per codebook")
    final["bitrate"] = model.bitrate
    (run_dir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
    if "test_l1" not in final:  # stopped (train.stop_at_step) before its first evaluation, as the other stages
        return
    line = f"held-out: val mel L1 {final['val_l1']:.4f} | test mel L1 " \
           f"{final['test_l1']:.4f} | {model.bitrate:.0f} bits/s"
    if "cer_codec" in final:
        line += (f" | judge CER on {d.eval_source or 'all'} test clips: original {final['cer_original']:.2%}, "
                 f"vocoder {final['cer_vocoder']:.2%}, codec {final['cer_codec']:.2%} "
                 f"({100 * (final['cer_codec'] - final['cer_vocoder']):+.1f} points)")
    print(line + f" | {final['train_seconds']:.0f}s")


def codec_model(cfg: TalkerStageConfig, sets: dict[str, SpeechSet]) -> Codec:
    if cfg.codec.n_mels != cfg.audio.n_mels:
        raise config.UserError(f"codec.n_mels ({cfg.codec.n_mels}) must equal audio.n_mels ({cfg.audio.n_mels})")
    return Codec(cfg.codec)


# ---------------------------------------------------------------------------------------------
# Phase "talker": the Talker learns to write the frozen codec's codes, word by word.


def talker_model(cfg: TalkerStageConfig, sets: dict[str, SpeechSet]) -> Talker:
    """The Talker, sized by the frozen codec (K codebooks of C codes) and told how many code frames a
    character of text takes on the training set (its generation cap for unseen text)."""
    t = cfg.talker
    codec = load_codec(t.codec)
    t.n_codebooks, t.codebook_size = codec.cfg.n_codebooks, codec.cfg.codebook_size
    train = sets["train"]
    t.frames_per_char = t.frames_per_char or sum(train.lengths) / HOP / sum(len(x) for x in train.texts)
    if t.phoneme_weight > 0:
        t.phonemes = t.phonemes or " ".join(phoneme_vocab(cfg.data.train))
        if not t.phonemes:
            raise config.UserError(f"talker.phoneme_weight > 0 needs eSpeak's phoneme events in {cfg.data.train}; "
                                   "rebuild the voice set with `python -m omni.speech_data --voice ...`")
        print(f"phoneme teacher: {len(t.phonemes.split())} classes, weight {t.phoneme_weight}")
    print(f"from {t.codec}: {t.n_codebooks} codebooks x {t.codebook_size} codes at {100 // HOP} Hz; "
          f"from {t.thinker}: the frozen token table ({t.cond}); {t.frames_per_char:.2f} frames per character")
    return build_talker(t)


def talker_task(cfg: TalkerStageConfig, sets: dict[str, SpeechSet], judge, model: Talker) -> Task:
    t, d, B = cfg.talker, cfg.data, cfg.train.batch_size
    codec, tokenizer = load_codec(t.codec), Tokenizer(repo_path(t.tokenizer))
    phonemes = t.phonemes.split() if t.phoneme_weight > 0 else None
    data = {name: load_talker_set(getattr(d, name), sets[name], cfg.audio, tokenizer, codec, t.codec,
                                  keep_mels=name == "test", phonemes=phonemes) for name in ("train", "val", "test")}
    train = data["train"]
    if len(train) < B:
        raise config.UserError(f"{d.train}: {len(train)} clips with word timings, fewer than train.batch_size ({B})")
    per_epoch = len(train) // B
    picks = {name: [k for k in range(len(s)) if not d.eval_source or s.sources[k] == d.eval_source][:d.eval_clips
                                                                                                   or None]
             for name, s in data.items()}
    reference = {}  # the judge on the eSpeak originals: the same at every evaluation

    def get_batch(i: int) -> dict:
        ids = batch_order(train.lengths, B, cfg.train.seed, i // per_epoch)[i % per_epoch]
        return collate(train, ids)

    def loss_fn(m, b):
        return talker_loss(*m(*(b[k] for k in FIELDS)), b, t)

    def evaluate(m):
        out = {}
        for name in ("val", "test"):
            out.update({(k if name == "val" and k == "loss" else f"{name}_{k}"): v
                        for k, v in teacher_forced(m, data[name], picks[name] or list(range(len(data[name])))).items()})
        spoken = free_generation(m, codec, data["test"], picks["test"], judge, d.griffin_lim_iters,
                                 seed=cfg.train.seed, reference=reference)
        samples = spoken.pop("samples")
        out.update({f"gen_{k}": v for k, v in spoken.items()})
        run_dir = repo_path(cfg.train.out_dir)
        wavs = samples["wavs"] or [mel_to_wav(x, cfg.audio, d.griffin_lim_iters) for x in samples["pred"][:d.wavs]]
        write_samples(run_dir, "talker", samples["texts"], samples["hyps"], wavs, samples["pred"], samples["orig"],
                      n=d.wavs)
        return out

    return Task(model, get_batch, loss_fn, evaluate, best_metric="loss", best_mode="min",
                count=lambda b: int(b["mask"].sum()), unit="frame", stage="D-talker")


def talker_report(cfg: TalkerStageConfig, sets: dict[str, SpeechSet], judge, model: Talker, final: dict) -> None:
    run_dir = repo_path(cfg.train.out_dir)
    (run_dir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
    if "test_acc0" not in final:  # stopped (train.stop_at_step) before its first evaluation, as the other stages
        return
    acc = " ".join(f"{final[f'test_acc{k}']:.1%}" for k in range(cfg.talker.n_codebooks))
    line = (f"held-out: teacher-forced code accuracy per codebook {acc} | word durations off by "
            f"{final['test_dur_mae']:.2f} frames | free generation on "
            f"{cfg.data.eval_source or 'all'} test sentences: {final['gen_ended']:.0%} ended by "
            f"themselves, duration {final['gen_dur_ratio']:.2f}x the original "
            f"({final['gen_dur_ratio_min']:.2f}-{final['gen_dur_ratio_max']:.2f})"
            f", real-time factor {final['gen_rtf']:.3f}")
    if "gen_cer" in final:
        line += (f" | judge CER: Talker {final['gen_cer']:.2%} (WER {final['gen_wer']:.2%}), eSpeak original "
                 f"{final['gen_cer_original']:.2%}, the codec's own codes {final['gen_cer_codec']:.2%}")
    print(line + f" | {final['train_seconds']:.0f}s")


# The phases: (model builder, task builder, final report).
PHASES = {"codec": (codec_model, codec_task, codec_report), "talker": (talker_model, talker_task, talker_report)}


def main(cfg: TalkerStageConfig) -> dict:
    # 1. Config ------------------------------------------------------------------------------
    print(json.dumps(config.to_dict(cfg), indent=2))
    if cfg.phase not in PHASES:
        raise config.UserError(f"phase: must be one of {', '.join(PHASES)}, got {cfg.phase!r}")
    build_model, build_task, report = PHASES[cfg.phase]
    repo_path(cfg.train.out_dir).mkdir(parents=True, exist_ok=True)

    # 2. Data: cached log-mel features of the voice set, and the judge ------------------------------
    vocab = CharVocab()
    sets = {name: load_speech_set(getattr(cfg.data, name), cfg.audio, vocab.is_valid)
            for name in ("train", "val", "test")}
    if len(sets["train"]) < cfg.train.batch_size:
        raise config.UserError(f"{cfg.data.train}: {len(sets['train'])} clips, fewer than train.batch_size")
    judge = load_recogniser(cfg.data.judge) if cfg.data.judge else None
    if judge is None:
        print("data.judge is empty: no intelligibility (CER) metrics")

    # 3. Model -------------------------------------------------------------------------------
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, sets)

    # 4. What trains: the whole codec (its codebooks by EMA), or the Talker (the Thinker stays frozen) ---
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"parameters: {n_train:,} trainable / {n_params:,} total")

    # 5. The loop ------------------------------------------------------------------------------
    task = build_task(cfg, sets, judge, model)
    final = fit(task, cfg.train, config.to_dict(cfg))

    # 6. Final evaluation and summary ------------------------------------------------------------
    final["params"] = n_params
    report(cfg, sets, judge, model, final)
    return final


if __name__ == "__main__":
    config.run(main, TalkerStageConfig, DEBUG)

"""Stage E: the omni model. The Thinker learns to read pictures and speech, and to answer.

What it teaches: how LLaVA and Qwen2.5-Omni join pretrained parts into one model; a projector
per modality; the ChatML template, placeholders and the splice of features into the token
embeddings; a loss on the assistant's tokens only; training in two phases, each with its own freeze
plan and data mix (the default: phase 1 aligns the projectors only, LLaVA's plan; the tiny config:
phase 1 is picture questions alone, so the lookups click early, then phase 2 the whole mix; the
encoders stay frozen); a data mix that keeps the Thinker's prose while it learns new skills; and
how to measure all of it on held-out pictures, unseen voices and unseen chapters.

    python -m omni.omni_data --out data/omni_tiny                      # spoken questions, ~1 minute
    python sft_omni.py --config configs/omni_tiny.json                 # 5-10 minutes on 2 CPU cores
    python sft_omni.py --config configs/omni_tiny.json --resume auto
    python sft_omni.py --debug                                         # a few steps, seconds
    python -m omni.chat --image data/shapes_tiny/test/000003.png --text "what colour is the star?"

It needs the checkpoints of stages A, B and C (init.*). Phase 1 runs in train.out_dir/phase1,
phase 2 in train.out_dir, which holds checkpoints, log.jsonl, curves.png, answers.png and
metrics.json. Chapters: chapters/08_stage_e_omni.md, chapters/09_using_omni.md.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import torch

from omni import config
from omni.audio import FrontEndConfig
from omni.audio_encoder import CharVocab, ctc_greedy_decode
from omni.device import setup_runtime
from omni.metrics import cer
from omni.omni_data import OmniData, OmniDataConfig, check_shares
from omni.omni_figures import plot_answers
from omni.omni_model import TranscribeConfig, from_stages, reply, transcripts
from omni.paths import repo_path
from omni.projector import ProjectorConfig
from omni.shapes import POSITIONS
from omni.speech_data import normalize
from omni.spoken_answers import espeak_ear, score_spoken_answers, talker_ear, talker_voice
from omni.trainer import Task, TrainConfig, fit, run_evaluation

ENCODERS = ("vision.", "audio.")
QA_KINDS = ("colour", "shape", "size", "position")  # the target: >= 90% over these four


@dataclass
class InitConfig:
    thinker: str = "runs/thinker_tiny/best.pt"  # stage A checkpoint: the Thinker
    tokenizer: str = "runs/thinker_tiny/tokenizer.model"  # stage A's tokenizer (its special tokens make the template)
    audio: str = "runs/audio_enc_tiny/best.pt"  # stage B checkpoint: the audio encoder (its CTC head is the reference)
    vision: str = "runs/vision_tiny/best.pt"  # stage C checkpoint: the vision encoder
    talker: str = "runs/talker_tiny/best.pt"  # stage D Talker: speaks the test answers at the end ("" = not scored)


@dataclass
class PhaseConfig:
    steps: int = 100  # phase 1 optimizer steps, before train.max_steps of phase 2 (0 = no phase 1)
    lr: float = 3e-3  # phase 1 peak learning rate (by default only small projectors learn: it can be high)
    warmup_steps: int = 10  # phase 1 linear warmup
    shares: dict[str, float] = field(default_factory=dict)  # phase 1's data mix ({} = data.shares)
    lr_scale: dict[str, float] = field(default_factory=lambda: {"thinker.": 0.0, "vision.": 0.0, "audio.": 0.0}
                                       )  # phase 1 freeze plan: lr multiplier by parameter prefix, 0 freezes

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"PhaseConfig.steps must be >= 0, got {self.steps}")
        if self.shares:  # {} = data.shares
            check_shares(self.shares, "PhaseConfig.shares")


@dataclass
class OmniStageConfig:
    data: OmniDataConfig = field(default_factory=OmniDataConfig)
    init: InitConfig = field(default_factory=InitConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    phase1: PhaseConfig = field(default_factory=PhaseConfig)
    transcribe: TranscribeConfig = field(default_factory=TranscribeConfig)  # how transcripts are decoded
    train: TrainConfig = field(default_factory=lambda: TrainConfig(  # phase 2: projectors and Thinker
        out_dir="runs/omni_tiny", lr_scale={"vision.": 0.0, "audio.": 0.0}))


# --debug: the same code path with toy sizes and a few steps (the stage checkpoints come from init.*).
DEBUG = {"projector.hidden": 32, "phase1.steps": 2, "phase1.warmup_steps": 1, "data.asr_clips": 16,
         "data.eval_questions": 12, "data.eval_clips": 4, "data.eval_tokens": 256, "data.samples": 1,
         "train.max_steps": 6, "train.batch_size": 4, "train.warmup_steps": 2, "train.eval_every": 3,
         "train.log_every": 2, "train.ckpt_every": 3, "train.out_dir": "runs/debug_omni", "train.overwrite": True}


def main(cfg: OmniStageConfig) -> dict:
    # 1. Config ------------------------------------------------------------------------------
    print(json.dumps(config.to_dict(cfg), indent=2))
    for where, plan in (("phase1.lr_scale", cfg.phase1.lr_scale), ("train.lr_scale", cfg.train.lr_scale)):
        if any(plan.get(p, 1.0) != 0 for p in ENCODERS):  # their features are computed once, below
            raise config.UserError(f"{where}: the encoders are frozen in stage E; it must map "
                                   f"{' and '.join(repr(p) for p in ENCODERS)} to 0, got {plan}")
    spelled = cfg.projector.audio_ctc > 0 or any("spell" in s for s in (cfg.data.shares, cfg.phase1.shares))
    if cfg.transcribe.ctc_weight > 0 and cfg.transcribe.spelling == "tokens" and not spelled:
        raise config.UserError(f"transcribe.ctc_weight: {cfg.transcribe.ctc_weight} weighs the audio frames' spelling, "
                               "which nothing trains here; set projector.audio_ctc > 0 or transcribe.ctc_weight to 0")
    if cfg.transcribe.ctc_weight > 0 and cfg.transcribe.spelling == "chars" and not cfg.projector.audio_chars > 0:
        raise config.UserError("transcribe.spelling: 'chars' weighs the frames' spelling in characters, which nothing "
                               "trains here; set projector.audio_chars > 0 or transcribe.spelling to 'tokens'")
    run_dir = repo_path(cfg.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    # 2. Data: the earlier stages, then every picture and clip through the frozen encoders once ---
    torch.manual_seed(cfg.train.seed)  # the projectors' initial weights
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    model, template, inherited, ctc = from_stages(cfg.init.thinker, cfg.init.tokenizer, cfg.init.audio,
                                                  cfg.init.vision, cfg.projector)
    if cfg.projector.image_pos_names:  # the shapes world's 3 x 3 cells, in the order of the picture's tokens
        if not cfg.projector.image_pos or model.image_tokens != len(POSITIONS):
            raise config.UserError(f"projector.image_pos_names: needs projector.image_pos and a picture of "
                                   f"{len(POSITIONS)} tokens (the shapes world's cells), got {model.image_tokens}")
        model.projectors["image"].name_positions(model.thinker.tok_emb.weight,
                                                 [template.text_ids(" " + name) for name in POSITIONS])
    # the spoken answers: the stage D Talker says them, the stage B recogniser (init.audio) listens
    hear = talker_ear(cfg.init.talker, cfg.init.audio) if cfg.init.talker else None
    # ... and the ceiling: eSpeak, the voice the Talker learned from, says them through the same chain
    hear_espeak = espeak_ear(talker_voice(cfg.init.talker), cfg.init.audio) if cfg.init.talker else None
    for name, path in (("thinker", cfg.init.thinker), ("audio", cfg.init.audio), ("vision", cfg.init.vision)):
        print(f"inherited from {path}: " + " ".join(f"{k}={v}" for k, v in inherited[name].items()))
    model.eval()
    front_end = config.from_dict(FrontEndConfig, inherited["front_end"], cfg.init.audio)
    data = OmniData(cfg.data, model, template, front_end, cfg.train.seed, cfg.train.batch_size, cfg.phase1.shares)
    if cfg.projector.image_words:  # each cell's token starts near the words that describe what is in it
        model.projectors["image"].fit_words(*data.cell_words(model.thinker.tok_emb.weight.detach()))
    qa = data.qa_eval()
    asr_refs, asr_prompts = data.asr_eval()
    seq_len = inherited["text_data"].get("seq_len", 128)
    val_x, val_y = data.text_eval(seq_len, cfg.data.eval_tokens or inherited["text_data"].get("eval_tokens", 0))
    token_bytes = torch.tensor(template.tok.token_bytes())
    val_bytes = token_bytes[val_y].sum().item()
    print(f"data: {len(data.qa):,} training questions on {len(data.records['train']):,} pictures, "
          f"{len(data.asr['train'][0]):,} transcription clips, {len(data.text_ids):,} text tokens; shares "
          + ", ".join(f"{k} {v:g}" for k, v in cfg.data.shares.items()))
    print(f"held out: {len(qa)} test questions (typed and spoken by unseen voices), {len(asr_refs)} unseen-voice "
          f"clips, {val_y.numel():,} tokens of held-out chapters")

    # 3. Model: the references the targets are measured against, before any training -------------
    def bits_per_byte(thinker) -> float:
        dev = thinker.tok_emb.weight.device
        nats = sum(thinker(val_x[j: j + 16].to(dev), val_y[j: j + 16].to(dev))[1].item() * val_y[j: j + 16].numel()
                   for j in range(0, len(val_x), 16))
        return nats / math.log(2) / val_bytes

    sources = data.asr_sources["test"]  # the speech set's kinds of clip, so the CER says where it is lost
    kinds = sorted(set(sources)) if len(set(sources)) > 1 else []

    def cer_by_source(hyps: list[str]) -> dict[str, float]:
        return {k: cer([r for r, s in zip(asr_refs, sources) if s == k], [h for h, s in zip(hyps, sources) if s == k])
                for k in kinds}

    vocab = CharVocab()
    with torch.no_grad():
        ref_bpb = bits_per_byte(model.thinker)
        hyps = []
        for _, _, f in asr_prompts:  # stage B's own CTC head on the very same clips
            logits = ctc.head(model.centre(f)).view(1, len(f) * ctc.up, -1).log_softmax(-1)
            hyps.append(vocab.decode(ctc_greedy_decode(logits, torch.tensor([len(f) * ctc.up]))[0]))
        ref_cer, ref_by_source = cer(asr_refs, hyps), cer_by_source(hyps)
    print(f"references: stage A bits per byte {ref_bpb:.4f} on the held-out chapters; stage B CER "
          f"{ref_cer:.2%} on the same unseen-voice clips")

    # 4. What trains: the freeze plan of each phase is config data (lr_scale, 0 = frozen) ---------
    def count(plan: dict) -> int:
        return sum(p.numel() for n, p in model.named_parameters()
                   if next((s for prefix, s in plan.items() if n.startswith(prefix)), 1.0) != 0)

    n_total = sum(p.numel() for p in model.parameters())
    for name, plan in (("phase 1", cfg.phase1.lr_scale), ("phase 2", cfg.train.lr_scale)):
        print(f"parameters, {name}: {count(plan):,} trainable / {n_total:,} total (frozen: "
              + ", ".join(k for k, v in plan.items() if v == 0) + ")")

    def partial(shares: dict) -> bool:  # some batches leave trainable parameters unused: DDP must look for them
        return shares.get("spell", 0) > 0 or cfg.projector.audio_chars > 0  # (spell rows: the Thinker; a batch
        # without clips: the letter head)

    def loss_fn(m, batch):
        return m(*batch)[1], {}

    def evaluate(m):
        out, eos = {}, template.im_end
        for mode in ("typed", "spoken") if data.voices else ("typed",):
            answers = [template.tok.decode(a).strip() for a in reply(m, [it[mode] for it in qa], 8, eos)]
            right = [a == it["a"] for a, it in zip(answers, qa)]
            prefix = "qa" if mode == "typed" else "spoken"
            for kind in sorted({it["kind"] for it in qa}):  # colour, count, position, shape, size, yesno (or other)
                pick = [r for r, it in zip(right, qa) if it["kind"] == kind]
                out[f"{prefix}_{kind}"] = sum(pick) / len(pick)
            main4 = [r for r, it in zip(right, qa) if it["kind"] in QA_KINDS] or right
            out[prefix] = sum(main4) / max(1, len(main4))
            for it, a, r in list(zip(qa, answers, right))[: cfg.data.samples]:
                verdict = "right" if r else f"wrong, expected {it['a']!r}"
                print(f"  {mode:>6} | test picture {it['picture']}: {it['q']} -> {a!r} ({verdict})")
            for it, a, r in zip(qa, answers, right):
                it[f"{mode}_answer"], it[f"{mode}_right"] = a, r
        hyps = [normalize(template.tok.decode(h)) for h in transcripts(m, asr_prompts, eos, 48, cfg.transcribe)]
        out["asr_cer"] = cer(asr_refs, hyps)
        out.update({f"asr_cer_{k}": v for k, v in cer_by_source(hyps).items()})
        print(f"  asr    | ref: {asr_refs[0]}\n         | hyp: {hyps[0]}")
        out["bpb"] = bits_per_byte(m.thinker)
        return out

    # 5. The loop: phase 1 (its own freeze plan and mix), then phase 2 (projectors and Thinker) -
    offset = cfg.phase1.steps * cfg.train.grad_accum  # phase 2 draws other batches than phase 1
    full = {**config.to_dict(cfg), "inherited": inherited}
    phase1_seconds = 0.0
    if cfg.phase1.steps:
        p1 = dataclasses.replace(cfg.train, out_dir=f"{cfg.train.out_dir}/phase1", max_steps=cfg.phase1.steps,
                                 lr=cfg.phase1.lr, warmup_steps=cfg.phase1.warmup_steps,
                                 lr_scale=cfg.phase1.lr_scale, stop_at_step=0, eval_every=cfg.phase1.steps)
        print(f"phase 1: {p1.max_steps} steps, frozen: {', '.join(k for k, v in p1.lr_scale.items() if v == 0)}; "
              f"data: {', '.join(f'{k} {v:g}' for k, v in (cfg.phase1.shares or cfg.data.shares).items())} "
              f"-> {p1.out_dir}")
        phase1_seconds = fit(Task(model, lambda i: data.batch(i, cfg.phase1.shares), loss_fn, evaluate, "qa", "max",
                                  lambda b: b[0].numel(), "tok", stage="E",
                                  partial=partial(cfg.phase1.shares or cfg.data.shares)),
                             p1, full)["train_seconds"]
    model.requires_grad_(True)  # fit freezes by setting requires_grad off: phase 1's plan must not carry over
    print(f"phase 2: {cfg.train.max_steps} steps, projectors and Thinker learn -> {cfg.train.out_dir}")
    task = Task(model, lambda i: data.batch(i + offset), loss_fn, evaluate, best_metric="qa", best_mode="max",
                count=lambda b: b[0].numel(), unit="tok", stage="E", partial=partial(cfg.data.shares))
    final = fit(task, cfg.train, full)

    # 6. Final evaluation and summary ------------------------------------------------------------
    final.update({"ref_bpb": ref_bpb, "ref_cer": ref_cer, "params": n_total, "phase1_seconds": phase1_seconds})
    if "qa" in final and "typed_answer" not in qa[0]:  # resumed after its last step: no evaluation ran here
        final.update(run_evaluation(task, setup_runtime(cfg.train.device, cfg.train.dtype, cfg.train.deterministic)))
    if hear is not None and "qa" in final:
        answers = [it["typed_answer"] for it in qa]
        said, ceiling = score_spoken_answers(answers, hear), score_spoken_answers(answers, hear_espeak)
        final.update(spoken_answers=said["rate"], spoken_answers_cer=said["cer"],
                     spoken_answers_espeak=ceiling["rate"], spoken_answers_espeak_cer=ceiling["cer"])
        wrong = [f"{a!r} -> {h!r}" for a, h in said["heard"].items() if a != h]
        print(f"spoken answers: the Talker ({cfg.init.talker}) said {said['distinct']} distinct answers; the "
              f"recogniser heard {said['rate']:.1%} of the {len(qa)} answers as said, CER {said['cer']:.1%}"
              + (f" (misheard: {', '.join(wrong[:8])})" if wrong else ""))
        wrong = [f"{a!r} -> {h!r}" for a, h in ceiling["heard"].items() if a != h]
        print(f"spoken answers, eSpeak's own voice through the same chain (the ceiling of this judge): "
              f"{ceiling['rate']:.1%} heard as said, CER {ceiling['cer']:.1%}"
              + (f" (misheard: {', '.join(wrong[:8])})" if wrong else ""))
    elif "qa" in final:
        print("spoken answers: not scored (init.talker is empty)")
    (run_dir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
    if kinds and "asr_cer" in final:  # only the process that evaluated has the figures
        print("transcription CER by kind of clip, stage E / stage B: " + ", ".join(
            f"{k} {final[f'asr_cer_{k}']:.1%} / {ref_by_source[k]:.1%} ({sources.count(k)} clips)" for k in kinds))
    if "qa" in final:
        plot_answers(data.records["test"], qa, repo_path(cfg.data.shapes) / "test.jsonl", run_dir / "answers.png")
        spoken = f" / spoken (unseen voices) {final['spoken']:.1%}" if "spoken" in final else ""
        kinds = ", ".join(f"{k} {final[f'qa_{k}']:.1%}" for k in ("count", "yesno") if f"qa_{k}" in final)
        print(f"held-out: typed {final['qa']:.1%}{spoken} over colour, shape, size, position ({kinds}) | "
              f"transcription CER {final['asr_cer']:.2%} (stage B {ref_cer:.2%}) | bits per byte {final['bpb']:.4f} "
              f"(stage A {ref_bpb:.4f})" + (f" | spoken answers {final['spoken_answers']:.1%} heard as said"
                                            f" (eSpeak {final['spoken_answers_espeak']:.1%})"
                                            if "spoken_answers" in final else "")
              + f" | {phase1_seconds + final['train_seconds']:.0f}s")
    return final


if __name__ == "__main__":
    config.run(main, OmniStageConfig, DEBUG)

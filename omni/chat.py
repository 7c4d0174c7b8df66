"""Talk to the omni model: show it a picture, ask by voice or by text, read (and later hear) the answer.

    python -m omni.chat --image data/shapes_tiny/test/000003.png --text "what colour is the star?"
    python -m omni.chat --image data/shapes_tiny/test/000003.png --audio question.wav
    python -m omni.chat --audio data/speech_tiny/wav/test_000000.wav --text "what did they say?"
    python -m omni.chat --demo                            # a held-out picture, asked aloud by an unseen voice
    python -m omni.chat                                   # a text chat in the terminal; an empty line ends it

The answer is written as it is generated (greedy, token by token with the KV cache). The command
prints the time to the first word (from reading the inputs to the first token of the answer) and
the whole answer's time. With a wav question it also prints what the Thinker hears in it (its own
transcript, asked as a second turn, decoded as the run's config says: `transcribe`, chapter 8); when
the typed question is that transcription request, the transcript is the answer.

Spoken answers come from stage D's Talker (--talker): it speaks the text answer, Griffin-Lim
makes the wav (--out), and stage B's recogniser (--recogniser) prints what it hears in it, with
the time to the first audio and the real-time factor. Without a Talker checkpoint the command
says so and answers in text only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from omni.audio import load_audio, log_mel
from omni.chat_template import AUDIO, user_parts
from omni.config import UserError, from_dict
from omni.omni_data import ASR_PROMPT
from omni.omni_model import TranscribeConfig, load_omni, transcripts
from omni.paths import repo_path
from omni.speech_data import normalize
from omni.vision import load_image


@torch.no_grad()
def stream(model, ids: list[int], image, audio, max_new: int, eos_id: int):
    """Yield the answer's token ids one at a time (greedy). image (N, d_vision) / audio (T, audio_width) or None."""
    dims = (model.vision.cfg.width, model.audio_width)
    img = image if image is not None else torch.zeros(0, dims[0])
    aud = audio if audio is not None else torch.zeros(0, dims[1])
    x = torch.tensor([ids])
    cache = model.thinker.make_cache(1)
    logits, _ = model.thinker(embeds=model.embed(x, img, aud), kv_cache=cache, start_pos=0)
    for pos in range(len(ids), min(len(ids) + max_new, model.thinker.cfg.max_seq_len)):
        nxt = logits[0, -1].argmax().view(1, 1)
        if nxt.item() == eos_id:
            return
        yield nxt.item()
        logits, _ = model.thinker(nxt, kv_cache=cache, start_pos=pos)


def answer(model, template, parts: list, image, audio, max_new: int) -> tuple[str, float]:
    """The reply to one user turn, printed as it comes; returns (text, seconds to the first token)."""
    ids, _ = template.encode([("user", parts)], add_generation_prompt=True)
    t0, first, out, text = time.time(), None, [], ""
    for token in stream(model, ids, image, audio, max_new, template.im_end):
        first = first if first is not None else time.time() - t0
        out.append(token)
        new = template.tok.decode(out)
        print(new[len(text):], end="", flush=True)
        text = new
    print()
    return text.strip(), first if first is not None else time.time() - t0


def speak_answer(text: str, talker: str, recogniser: str, out: str, t_start: float) -> Path | None:
    """The spoken answer: stage D's Talker speaks the text answer (omni.say), Griffin-Lim makes it
    a wav, and stage B's recogniser says what it hears in it. None when no Talker exists yet."""
    if not repo_path(talker).is_file():
        print(f"spoken answer: none ({talker} not found; the Talker of stage D speaks the answers once trained)")
        return None
    import soundfile as sf

    from omni.griffin_lim import mel_to_wav
    from omni.recogniser import load_recogniser
    from omni.say import load_talker, speak
    from omni.talker_data import FRAME_RATE

    said = normalize(text)  # as the Talker's transcripts: lower-case words
    if not said:
        print(f"spoken answer: none (no words to say in {text!r})")
        return None
    model, tok, codec, front_end = load_talker(talker)
    t0 = time.time()
    spoken = speak(model, codec, tok, [said], generator=torch.Generator().manual_seed(0))
    wav = mel_to_wav(spoken["mels"][0], front_end)
    done = time.time()
    seconds = len(spoken["codes"][0]) / FRAME_RATE
    path = repo_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, front_end.sample_rate)
    heard = load_recogniser(recogniser).transcribe([wav], front_end.sample_rate)[0]
    # The Talker writes the whole answer's codes before Griffin-Lim runs, so the first audio is ready
    # when all of it is: time to first audio = time to the whole answer's speech.
    print(f"spoken answer: {out} ({seconds:.2f} s) | time to first audio {done - t_start:.3f}s | real-time factor "
          f"{(done - t0) / max(seconds, 1e-9):.3f} | the recogniser hears: {heard}")
    return path


def demo_inputs(shapes: str = "data/shapes_tiny", spoken: str = "data/omni_tiny") -> tuple[str, str, dict]:
    """The main job's demo: the first test picture (it holds a colour-shape pair never seen in
    training) with one of its colour or shape questions, spoken by a voice never heard in training."""
    pictures, clips = repo_path(shapes) / "test.jsonl", repo_path(spoken) / "questions_test.jsonl"
    for f in (pictures, clips):
        if not f.is_file():
            raise UserError(f"--demo: {f} not found; build it with python -m omni.shapes / python -m omni.omni_data")
    by_text = {}
    for line in clips.read_text().splitlines():
        row = json.loads(line)
        by_text.setdefault(row["text"], row)
    for line in pictures.read_text().splitlines():
        pic = json.loads(line)
        for qa in pic["questions"]:
            row = by_text.get(normalize(qa["q"]))
            if row and qa["q"].startswith(("what colour", "what shape")):
                return f"{shapes}/{pic['image']}", f"{spoken}/{row['audio']}", {**qa, "speaker": row["speaker"]}
    raise UserError(f"--demo: no test picture in {pictures} has a colour or shape question spoken in {clips}")


def run(model, template, front_end, args, question_first: bool = False,
        decode: TranscribeConfig = TranscribeConfig(ctc_weight=0.0)) -> str:
    """Answer one turn. question_first: the question before the picture, as the run was trained
    (its config's data.question_first); decode: how the question's transcript is decoded."""
    t0 = time.time()
    parts, image, audio = [], None, None  # parts: the question (spoken, typed); the picture joins it below
    if args.image:
        image = model.encode_images(load_image(repo_path(args.image), model.vision.cfg.image_size)[None])[0]
    if args.audio:
        path = repo_path(args.audio)
        if not path.is_file():
            raise UserError(f"--audio {args.audio}: file not found")
        try:
            wav = load_audio(path, front_end.sample_rate)
        except Exception as e:  # libsndfile names the problem; the user gets one line
            raise UserError(f"--audio {args.audio}: not a readable sound file ({type(e).__name__})") from None
        mel = log_mel(wav, front_end)
        audio = model.encode_audio(mel[None], torch.tensor([len(mel)]))[0]
        parts.append((AUDIO, len(audio)))
        ids, _ = template.encode([("user", [(AUDIO, len(audio)), ASR_PROMPT])], add_generation_prompt=True)
        heard = template.tok.decode(transcripts(model, [(ids, None, audio)], template.im_end, 48, decode)[0])
        print(f"question heard as: {heard.strip()}")
    if args.text:
        parts.append(args.text)
    if image is not None:
        parts = user_parts(len(image), parts, question_first)
    prep = time.time() - t0
    print("answer: ", end="", flush=True)
    if audio is not None and image is None and normalize(args.text or "") == normalize(ASR_PROMPT):
        # A transcription turn: its answer is the transcript above, decoded as stage E's evaluation
        # scores transcription (`transcribe`). Greedy decoding of the same turn can write another word.
        text, first = heard.strip(), 0.0
        print(text)
    else:
        text, first = answer(model, template, parts, image, audio, args.tokens)
    print(f"time to first word {prep + first:.3f}s (inputs {prep:.3f}s) | answer in {time.time() - t0:.3f}s")
    speak_answer(text, args.talker, args.recogniser, args.out, t0)
    return text


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/omni_tiny/best.pt", help="a stage E checkpoint")
    p.add_argument("--image", help="a picture (any format Pillow reads)")
    p.add_argument("--audio", help="a spoken question, a .wav file")
    p.add_argument("--text", help="a typed question or instruction")
    p.add_argument("--tokens", type=int, default=48, help="longest answer, in tokens")
    p.add_argument("--talker", default="runs/talker_tiny/best.pt", help="stage D's Talker, for the spoken answer")
    p.add_argument("--out", default="runs/omni_tiny/answer.wav", help="where the spoken answer goes")
    p.add_argument("--recogniser", default="runs/audio_enc_tiny/best.pt", help="stage B model that checks the speech")
    p.add_argument("--demo", action="store_true", help="a held-out picture and a question spoken by an unseen voice")
    args = p.parse_args(argv)
    if args.tokens < 1:
        raise UserError(f"--tokens {args.tokens}: give at least 1")
    model, template, front_end, cfg = load_omni(args.checkpoint)
    question_first = cfg.get("data", {}).get("question_first", False)
    decode = from_dict(TranscribeConfig, cfg.get("transcribe", {"ctc_weight": 0.0}), args.checkpoint)  # older: greedy
    if args.demo:
        args.image, args.audio, qa = demo_inputs()
        print(f"demo: picture {args.image} | question '{qa['q']}' spoken by {qa['speaker']} ({args.audio}) "
              f"| expected answer: {qa['a']}")
    if args.image or args.audio or args.text:
        return run(model, template, front_end, args, question_first, decode)
    print("text chat with the omni model; an empty line ends it")
    text = ""
    for line in sys.stdin if not sys.stdin.isatty() else iter(lambda: input("you: "), ""):
        if not line.strip():
            break
        args.text = line.strip()
        text = run(model, template, front_end, args, question_first, decode)
    return text


if __name__ == "__main__":
    from omni.config import cli

    cli(main)

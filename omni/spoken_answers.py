"""Spoken answers: stage D's Talker says the Thinker's answers, stage B's recogniser listens.

The last of stage E's metrics closes the loop of the omni model: a test picture, a question, the
Thinker's text answer, then the Talker's speech of that answer (codes -> codec decoder ->
Griffin-Lim), then the stage B recogniser's transcript of that speech. An answer counts as
spoken back when the transcript is the answer's text, word for word (after the same
normalisation as the transcripts: lower case, letters and spaces). The recogniser only listens;
nothing in stage D or E trains against it.

Answers in the shapes world come from a small set ("purple", "top left", "three", "yes", ...), and
the Talker decodes greedily (talker.temperature 0 in configs/talker_tiny.json), so the same text
always gives the same speech: each distinct answer is spoken and heard once, and every question
with that answer shares the verdict. With a sampling Talker this is one draw per distinct answer.

The same chain with eSpeak in the Talker's place (`espeak_ear`: the voice the Talker learned from,
then the same log-mel, Griffin-Lim and recogniser) is the ceiling of this measurement. The stage B
recogniser spells from sound alone, with no dictionary and no sentence around a word, and a lone
word is where that shows: it hears eSpeak's own "three" as "thre" and "green" as "gren". A Talker
can only be judged against what the judge makes of the original.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch

from omni.metrics import cer
from omni.speech_data import normalize


def score_spoken_answers(answers: list[str], hear: Callable[[list[str]], list[str]]) -> dict:
    """answers: the Thinker's text answer to each test question. hear: texts -> what the recogniser
    heard when the Talker said each. Returns the share of answers heard as said ("rate"), the
    character error rate over all the non-empty answers ("cer"), the number of distinct answers
    spoken, and {answer: heard} ("heard"). An empty answer is never heard."""
    said = sorted({normalize(a) for a in answers} - {""})
    heard = dict(zip(said, (normalize(h) for h in hear(said)))) if said else {}
    right = [bool(normalize(a)) and heard[normalize(a)] == normalize(a) for a in answers]
    spoken = [normalize(a) for a in answers if normalize(a)]
    return {"rate": sum(right) / max(1, len(right)), "cer": cer(spoken, [heard[a] for a in spoken]),
            "distinct": len(said), "heard": heard}


def talker_ear(talker: str, judge: str, gl_iters: int = 48, batch: int = 32) -> Callable[[list[str]], list[str]]:
    """The chain Talker -> codec -> Griffin-Lim -> recogniser as one function of texts, from a stage D
    Talker checkpoint and a stage B checkpoint (each a clear error when missing or of another stage)."""
    from omni.recogniser import load_recogniser
    from omni.say import load_talker, speak
    from omni.speech_eval import judge_speech

    model, tok, codec, _ = load_talker(talker)
    recogniser = load_recogniser(judge)

    def hear(texts: list[str]) -> list[str]:
        g = torch.Generator().manual_seed(0)
        mels = []
        for j in range(0, len(texts), batch):
            mels += speak(model, codec, tok, texts[j: j + batch], generator=g)["mels"]
        return judge_speech(recogniser, mels, texts, gl_iters)["hyps"]

    return hear


def talker_voice(talker: str) -> str:
    """The eSpeak voice a stage D Talker learned from (the most common speaker of its training
    manifest: the bare answers are also said a little faster and slower), as a speaker id like
    'en-us+m1@r175p50'."""
    from omni.audio import read_manifest
    from omni.checkpoint import load_stage_checkpoint
    from omni.paths import repo_path

    manifest = load_stage_checkpoint(talker, "D-talker")["config"]["data"]["train"]
    return Counter(r["speaker"] for r in read_manifest(repo_path(manifest))).most_common(1)[0][0]


def espeak_ear(voice: str, judge: str, gl_iters: int = 48) -> Callable[[list[str]], list[str]]:
    """eSpeak -> log-mel -> Griffin-Lim -> recogniser as one function of texts: the reference for
    talker_ear. voice: a speaker id 'ACCENT+VARIANT@rRATEpPITCH' as the manifests write it."""
    from omni.audio import log_mel
    from omni.recogniser import load_recogniser
    from omni.speech_eval import judge_speech
    from omni.tts import parse_voice, synthesize

    name, _, settings = voice.partition("@r")
    rate, _, pitch = settings.partition("p")
    speaker = parse_voice(name, int(rate), int(pitch))  # checked against eSpeak's voices
    recogniser = load_recogniser(judge)

    def hear(texts: list[str]) -> list[str]:
        mels = [log_mel(torch.from_numpy(synthesize(t, speaker, recogniser.front_end.sample_rate)),
                        recogniser.front_end) for t in texts]
        return judge_speech(recogniser, mels, texts, gl_iters)["hyps"]

    return hear

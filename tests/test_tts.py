"""eSpeak NG in-process: word events, and the audio that stage B's data is made of."""
import importlib.metadata
import json
import subprocess
import sys

import numpy as np
import pytest

from omni.config import UserError
from omni.paths import ROOT
from omni.tts import Voice, parse_voice, synthesize_with_words

SENTENCES = [("a small red circle at the top left", Voice("en-us", "m3", 160, 40)),
             ("It is a truth universally acknowledged.", Voice("en-gb-scotland", "f1", 190, 60))]
# sha1 (first 16 hex digits) of eSpeak's int16 samples (22,050 Hz, before resampling) for
# SENTENCES, spoken one after the other in a fresh process by omni/tts.py as it was before word
# events were read (commit f35e322), with espeakng-loader 0.2.4. If reading the events changed
# the audio, stage B's data set would change with it. (The resampled float32 audio is not
# compared bit for bit: its last bits depend on the BLAS thread count.)
BEFORE_WORD_EVENTS = ["b23e2d18b41e5e19", "94a2de87eff2695a"]
_SPEAK = """
import hashlib, json, sys
from omni.tts import Voice, _engine, synthesize, synthesize_with_words
out = []
for text, v in json.loads(sys.argv[1]):
    if sys.argv[2] == "engine":
        out.append(hashlib.sha1(_engine().synth(text, Voice(*v)).tobytes()).hexdigest()[:16])
    else:
        fn = synthesize if sys.argv[2] == "plain" else (lambda t, v: synthesize_with_words(t, v)[0])
        out.append(hashlib.sha1(fn(text, Voice(*v)).tobytes()).hexdigest()[:16])
print(json.dumps(out))
"""


def _hashes_in_fresh_process(path: str) -> list[str]:
    """eSpeak keeps state from one utterance to the next, so each path starts in its own process."""
    args = json.dumps([(t, [v.accent, v.variant, v.rate, v.pitch]) for t, v in SENTENCES])
    done = subprocess.run([sys.executable, "-c", _SPEAK, args, path], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def test_word_events_give_each_word_its_start():
    text = "a small red circle at the top left"
    wav, words = synthesize_with_words(text, Voice("en-us", "m1"))
    duration = len(wav) / 16000
    offsets = [i for i, c in enumerate(text) if c != " " and (i == 0 or text[i - 1] == " ")]
    assert [w.text_position for w in words] == offsets  # one event per word, at the word
    assert [w.length for w in words] == [len(w) for w in text.split()]
    starts = [w.start for w in words]
    assert starts[0] < 0.1 and all(a < b for a, b in zip(starts, starts[1:])) and starts[-1] < duration - 0.1
    assert 0.15 < (starts[-1] - starts[0]) / (len(starts) - 1) < 0.4  # about 175 words per minute


def test_reading_word_events_leaves_the_audio_unchanged():
    plain, timed = _hashes_in_fresh_process("plain"), _hashes_in_fresh_process("timed")
    assert plain == timed  # stage B's path and stage D's path give the same waveform
    if importlib.metadata.version("espeakng-loader") != "0.2.4":
        pytest.skip("the recorded hashes were made with espeakng-loader 0.2.4")
    assert _hashes_in_fresh_process("engine") == BEFORE_WORD_EVENTS


def test_voice_names_are_checked():
    assert parse_voice("en-us+m1", rate=150) == Voice("en-us", "m1", 150, 50)
    for bad in ("en-us", "en-us+nobody", "xx+m1", ""):
        with pytest.raises(UserError, match="ACCENT\\+VARIANT"):
            parse_voice(bad)


def test_silence_has_no_word_events():
    wav, words = synthesize_with_words("", Voice())
    assert words == [] and np.abs(wav).max(initial=0) < 0.01

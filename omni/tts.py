"""Text to speech with eSpeak NG, in-process, so TinyOmni can make its own speech offline.

eSpeak NG is a small formant synthesizer (no neural network, no downloads). The pip wheel
`espeakng-loader` ships its shared library and its voice data; we drive the library through its
C API with `ctypes`. The glue is five calls:

    espeak_Initialize(SYNCHRONOUS, ...)   -> the library's sample rate (22050 Hz)
    espeak_SetSynthCallback(cb)           cb(short *wav, int n, espeak_EVENT *events) receives
                                          the samples and the events (word starts, ...)
    espeak_SetVoiceByName("en-us+m3")     accent (a language file) + variant (a voice timbre)
    espeak_SetParameter(RATE / PITCH)     words per minute, base pitch 0..100
    espeak_Synth(text, ...)               blocks until the whole text was passed to cb

A voice identity is accent x variant x rate x pitch. The accents are eSpeak's English language
files (British, American, Scottish, Caribbean, ...), the variants are the files in
`espeak-ng-data/voices/!v` (m1..m8 male, f1..f5 female, klatt* use a different synthesizer,
plus many named ones). Both lists are read from the data folder, never hard-coded.

Word timings: with the samples, eSpeak hands the callback an array of `espeak_EVENT`s (ended by
one of type 0). A word event (type 1) says where the word is in the text (`text_position`,
1-based, in characters) and when it starts in the audio (`audio_position`, in ms), which gives
stage D the words' start times without any aligner. Initialised with phoneme events
(espeakINITIALIZE_PHONEME_EVENTS), it also reports each phoneme (type 7: its mnemonic, such as
`s`, `'O:`, `@L`, and its start in ms): the phoneme teacher of stage D's Talker. Reading events
leaves the audio unchanged (tests/test_tts.py). The positions are exact for plain text but
drift after quotes and underscores (seen: in `"it is."` the word "is" gets the position of the "t"), so callers
that need exact positions speak text without them (`omni.speech_data.spoken_form`).

eSpeak keeps one global state per process, so this module is not thread-safe: use processes.
Reference: https://github.com/espeak-ng/espeak-ng/blob/master/src/include/espeak-ng/speak_lib.h
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from omni.config import UserError

# Constants from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Synth blocks and hands samples to the callback
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH = 1, 3
_EVENT_END, _EVENT_WORD, _EVENT_PHONEME = 0, 1, 7  # espeak_EVENT_TYPE: list terminator, word start, phoneme
_INITIALIZE_PHONEME_EVENTS = 1  # espeak_Initialize option: report phonemes too


class _Event(ctypes.Structure):
    """espeak_EVENT as speak_lib.h lays it out (40 bytes on x86-64)."""

    _fields_ = [("type", ctypes.c_int),  # 1 word, 2 sentence, 5 end, 7 phoneme, 8 sample rate, 0 last
                ("unique_identifier", ctypes.c_uint),  # the id espeak_Synth returned (unused: 0)
                ("text_position", ctypes.c_int),  # 1-based character position in the text
                ("length", ctypes.c_int),  # the word's length in characters
                ("audio_position", ctypes.c_int),  # ms from the start of the output
                ("sample", ctypes.c_int),  # the same time in samples at the library's rate
                ("user_data", ctypes.c_void_p),  # the pointer given to espeak_Synth (None)
                ("id", ctypes.c_char * 8)]  # union {int number; char *name; char string[8]}


# The callback's C type: int cb(short *wav, int numsamples, espeak_EVENT *events). Returning 0
# means "go on".
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class WordEvent:
    start: float  # seconds from the start of the clip
    text_position: int  # 0-based character offset of the word in the spoken text
    length: int  # characters, as eSpeak counts them


@dataclass(frozen=True)
class PhonemeEvent:
    start: float  # seconds from the start of the clip
    symbol: str  # eSpeak's phoneme mnemonic, stress marks included ("'O:", "s", "_" = pause)


@dataclass(frozen=True)
class Voice:
    accent: str = "en-us"  # eSpeak English voice file, e.g. en, en-us, en-gb-scotland (english_accents())
    variant: str = "m1"  # voice variant file in espeak-ng-data/voices/!v, e.g. m3, f2, klatt
    rate: int = 175  # speaking rate in words per minute (eSpeak accepts 80..450)
    pitch: int = 50  # base pitch on eSpeak's 0..100 scale, 50 = the variant's own pitch

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}"

    @property
    def speaker_id(self) -> str:
        """A readable id for manifests: accent, variant, rate and pitch."""
        return f"{self.accent}+{self.variant}@r{self.rate}p{self.pitch}"


def _data_path() -> Path:
    try:
        import espeakng_loader
    except ImportError:
        raise UserError("the speech data needs eSpeak NG: run `pip install espeakng-loader`") from None
    return Path(espeakng_loader.get_data_path())


@lru_cache(maxsize=1)
def english_accents() -> tuple[str, ...]:
    """eSpeak's English accents: the `lang/gmw/en*` voice files, named as espeak_SetVoiceByName
    wants them (file names; it ignores case): en (British), en-us, en-gb-scotland, ..."""
    names = sorted(f.name.lower() for f in (_data_path() / "lang" / "gmw").glob("en*"))
    return tuple(n for n in names if n != "en-shaw")  # Shavian is a different alphabet, not an accent


@lru_cache(maxsize=1)
def voice_variants() -> tuple[str, ...]:
    """Every voice variant eSpeak knows: the file names in `voices/!v`."""
    return tuple(sorted(p.name for p in (_data_path() / "voices" / "!v").iterdir()))


class _ESpeak:
    """The library, initialised once per process, collecting the callback's samples and word
    events in lists."""

    def __init__(self):
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(_data_path()).encode(),
                                                _INITIALIZE_PHONEME_EVENTS)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate})")
        self.chunks: list[np.ndarray] = []
        self.words: list[WordEvent] = []
        self.phonemes: list[PhonemeEvent] = []
        self._callback = _CALLBACK(self._on_samples)  # keep a reference: C holds only a raw pointer
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def _on_samples(self, wav, n, events) -> int:
        if wav and n > 0:  # copy now: eSpeak reuses the buffer for the next chunk
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events and events[i].type != _EVENT_END:  # reading events does not change the audio
            e = events[i]
            if e.type == _EVENT_WORD:
                self.words.append(WordEvent(e.audio_position / 1000, e.text_position - 1, e.length))
            elif e.type == _EVENT_PHONEME:
                self.phonemes.append(PhonemeEvent(e.audio_position / 1000, e.id.decode("ascii", "replace")))
            i += 1
        return 0

    def synth(self, text: str, voice: Voice) -> np.ndarray:
        """int16 samples at `self.sample_rate`."""
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise UserError(f"eSpeak has no accent '{voice.accent}' "
                            f"(try one of {', '.join(english_accents())})")
        self.lib.espeak_SetParameter(_PARAM_RATE, voice.rate, 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, voice.pitch, 0)
        data = text.encode("utf-8")
        self.chunks, self.words, self.phonemes = [], [], []
        err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err} on {text!r}")
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


@lru_cache(maxsize=1)
def _engine() -> _ESpeak:
    return _ESpeak()


def synthesize_timed(text: str, voice: Voice = Voice(),
                     sample_rate: int = 16000) -> tuple[np.ndarray, list[WordEvent], list[PhonemeEvent]]:
    """Speak `text` with `voice`: a float32 waveform in [-1, 1] at `sample_rate` Hz, shape (N,),
    eSpeak's word events in order (start in seconds, position in `text`, length) and its phoneme
    events in order (start in seconds, mnemonic)."""
    from omni.audio import resample  # the same resampler the audio loader uses

    if voice.variant not in voice_variants():  # eSpeak would silently ignore an unknown variant
        raise UserError(f"eSpeak has no voice variant '{voice.variant}' (see espeak-ng-data/voices/!v)")
    engine = _engine()
    wav = engine.synth(text, voice).astype(np.float32) / 32768.0
    return resample(wav, engine.sample_rate, sample_rate), list(engine.words), list(engine.phonemes)


def synthesize_with_words(text: str, voice: Voice = Voice(),
                          sample_rate: int = 16000) -> tuple[np.ndarray, list[WordEvent]]:
    """Speak `text` with `voice`: the waveform and eSpeak's word events (see synthesize_timed)."""
    return synthesize_timed(text, voice, sample_rate)[:2]


def synthesize(text: str, voice: Voice = Voice(), sample_rate: int = 16000) -> np.ndarray:
    """Speak `text` with `voice`: a float32 waveform in [-1, 1] at `sample_rate` Hz, shape (N,)."""
    return synthesize_with_words(text, voice, sample_rate)[0]


def parse_voice(name: str, rate: int = 175, pitch: int = 50) -> Voice:
    """'ACCENT+VARIANT' (e.g. en-us+m1) -> a Voice, checked against eSpeak's data folder."""
    accent, plus, variant = name.partition("+")
    if not plus or accent not in english_accents() or variant not in voice_variants():
        raise UserError(f"--voice '{name}': expected ACCENT+VARIANT with an accent from "
                        f"{', '.join(english_accents())} and a variant from espeak-ng-data/voices/!v "
                        "(e.g. en-us+m1)")
    return Voice(accent, variant, rate, pitch)

"""The judge: the stage B recogniser, used to measure how intelligible generated speech is.

It transcribes waveforms or log-mel features with greedy CTC decoding, and the character error
rate of its transcripts against the intended text is stage D's intelligibility metric. It is
only ever a judge: nothing is trained against it (no ASR loss, no gradients through it), or the
Talker would learn to please this one recogniser instead of speaking clearly.
"""
from __future__ import annotations

import numpy as np
import torch

from omni.audio import FrontEndConfig, log_mel, pad_batch
from omni.audio_encoder import AudioCTC, AudioEncoderConfig, CharVocab, ctc_greedy_decode
from omni.checkpoint import load_stage_checkpoint
from omni.config import UserError, from_dict


class Recogniser:
    def __init__(self, model: AudioCTC, front_end: FrontEndConfig, batch: int = 32):
        self.model = model.eval()
        self.front_end = front_end
        self.vocab = CharVocab()
        self.batch = batch  # clips per forward pass

    @torch.no_grad()
    def transcribe_features(self, feats: list[torch.Tensor]) -> list[str]:
        """Greedy transcripts of (T_i, n_mels) normalised log-mel clips."""
        order = sorted(range(len(feats)), key=lambda k: len(feats[k]))  # similar lengths share a batch
        out = [""] * len(feats)
        for j in range(0, len(order), self.batch):
            ids = order[j: j + self.batch]
            x, lengths = pad_batch([feats[k].float().cpu() for k in ids])
            log_probs, out_lengths = self.model(x, lengths)
            for k, path in zip(ids, ctc_greedy_decode(log_probs, out_lengths, self.vocab.blank)):
                out[k] = self.vocab.decode(path)
        return out

    def transcribe(self, wavs: list[np.ndarray], sample_rate: int = 16000) -> list[str]:
        """Greedy transcripts of waveforms (N_i,) at the front end's sample rate."""
        if sample_rate != self.front_end.sample_rate:
            raise ValueError(f"the judge expects {self.front_end.sample_rate} Hz audio, got {sample_rate}")
        return self.transcribe_features([log_mel(w, self.front_end) for w in wavs])


def load_recogniser(path: str) -> Recogniser:
    """The recogniser of a stage B checkpoint (runs/audio_enc_tiny/best.pt), on the CPU."""
    state = load_stage_checkpoint(path, "B")
    cfg = state.get("config", {})
    if "model" not in cfg or "audio" not in cfg or not any(k.startswith("encoder.") for k in state.get("model", {})):
        raise UserError(f"{path}: not a stage B checkpoint (train one with "
                        "`python train_audio_enc.py --config configs/audio_enc_tiny.json`)")
    model = AudioCTC(from_dict(AudioEncoderConfig, cfg["model"], f"{path} (model config)"))
    model.load_state_dict(state["model"])
    return Recogniser(model, from_dict(FrontEndConfig, cfg["audio"], f"{path} (audio config)"))

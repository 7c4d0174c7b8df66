"""Griffin-Lim on known signals: it recovers a waveform whose spectrum matches, far better than a
random phase does, and mel_to_wav inverts the front end closely enough to be heard again."""
import numpy as np
import torch

from omni.audio import FrontEndConfig, log_mel
from omni.griffin_lim import griffin_lim, mel_to_wav, spectral_convergence

SR, N_FFT, HOP = 16000, 400, 160


def _sines_and_chirp(seconds: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(SR * seconds)) / SR
    chirp = torch.sin(2 * torch.pi * (200 * t + 3000 * t ** 2))  # 200 Hz rising to 3.2 kHz
    return 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.2 * torch.sin(2 * torch.pi * 1250 * t) + 0.3 * chirp


def _magnitude(wav: torch.Tensor) -> torch.Tensor:
    return torch.stft(wav, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True, pad_mode="reflect",
                      return_complex=True).abs()


def test_griffin_lim_beats_random_phase_on_a_known_signal():
    wav = _sines_and_chirp()
    mag = _magnitude(wav)
    random_phase = griffin_lim(mag, N_FFT, HOP, len(wav), n_iter=0)  # the starting point: random phase
    recovered = griffin_lim(mag, N_FFT, HOP, len(wav), n_iter=48)
    sc_random = spectral_convergence(random_phase, mag, N_FFT, HOP)
    sc_gl = spectral_convergence(recovered, mag, N_FFT, HOP)
    assert sc_random > 0.3  # a random phase is far from any real signal's spectrum
    assert sc_gl < 0.25 * sc_random, (sc_gl, sc_random)
    # more rounds do not make it worse
    assert spectral_convergence(griffin_lim(mag, N_FFT, HOP, len(wav), n_iter=96), mag, N_FFT, HOP) <= sc_gl + 1e-3


def test_mel_to_wav_round_trip_keeps_the_log_mel():
    """Tones plus noise bursts (speech has both): the re-analysed log-mel of the vocoded wav is
    much closer to the original than that of the same magnitudes with a random phase."""
    cfg = FrontEndConfig()
    t = torch.arange(12800) / SR
    bursts = 0.05 * torch.randn(12800, generator=torch.Generator().manual_seed(0)) * (torch.sin(6 * torch.pi * t) > 0)
    mel = log_mel(_sines_and_chirp(0.8) + bursts, cfg)  # (80, 80): 0.8 s at 100 frames per second
    wav = mel_to_wav(mel, cfg, n_iter=32)
    assert wav.dtype == np.float32 and wav.shape == (len(mel) * cfg.hop_length,) and np.isfinite(wav).all()
    assert np.abs(wav).max() <= 0.99 + 1e-6
    again = log_mel(wav, cfg)
    assert again.shape == mel.shape
    err = float((again - mel).abs().mean())
    err_random = float((log_mel(mel_to_wav(mel, cfg, n_iter=0), cfg) - mel).abs().mean())
    assert err < 0.7 * err_random, (err, err_random)

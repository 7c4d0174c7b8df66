"""Device, precision and torchrun set-up (omni/device.py), checked on a CPU machine by pretending
the GPU parts where needed: what process group and device a torchrun process takes, the clear line
for more processes than GPUs, and the deterministic switch."""
import pytest
import torch

from omni import device
from omni.config import UserError


@pytest.fixture
def torchrun(monkeypatch):
    """The environment torchrun gives the second of two processes; init_process_group only records."""
    for k, v in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    backends = []
    monkeypatch.setattr(device.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(device.dist, "init_process_group", lambda backend: backends.append(backend))
    return backends


def test_torchrun_on_the_cpu_takes_gloo_even_where_a_gpu_is(torchrun, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    rt = device.setup_runtime("cpu", "auto")
    assert (rt.device.type, rt.rank, rt.world_size, rt.dtype, torchrun) == ("cpu", 1, 2, torch.float32, ["gloo"])


def test_more_torchrun_processes_than_gpus_is_one_clear_line(torchrun, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"more processes on this machine than it has GPUs \(1\).*nproc_per_node=1"):
        device.setup_runtime("auto", "auto")
    assert torchrun == []  # refused before joining a process group


def test_deterministic_kernels_are_asked_for_on_a_gpu_only(monkeypatch):
    calls = []
    monkeypatch.setattr(device, "make_deterministic", lambda: calls.append(1))
    device.setup_runtime("cpu", "auto", deterministic=True)
    assert calls == []  # a CPU is deterministic already: nothing global changes
    monkeypatch.setattr(device, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(device, "pick_dtype", lambda name, dev: torch.bfloat16)
    device.setup_runtime("auto", "auto", deterministic=False)
    assert calls == []
    device.setup_runtime("auto", "auto", deterministic=True)
    assert calls == [1]


def test_make_deterministic_sets_the_modes(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        device.make_deterministic()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert device.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_importing_omni_settles_the_vector_math_before_any_threaded_call():
    """MKL's vector math picks its code path on its first call; a first call on two threads gave the
    second thread's half of a RoPE cos table from another path in 3 and 10 of 30 processes without the
    settling call in omni/__init__.py (chapters/logs/vml_first_call.txt). Twelve fresh processes that import omni, then
    build the table on two threads: the first result equals a later one in every process."""
    import subprocess
    import sys

    from omni.paths import ROOT

    child = ("import omni, torch; torch.set_num_threads(2)\n"
             "a = torch.cat([torch.outer(torch.arange(256).float(),"
             " 1.0 / 10000.0 ** (torch.arange(0, 32, 2).float() / 32))] * 2, dim=-1)\n"
             "print(torch.equal(a.cos(), a.cos()))")
    runs = [subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, check=True)
            for _ in range(12)]
    assert [r.stdout.strip() for r in runs] == ["True"] * 12

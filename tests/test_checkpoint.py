"""Checkpoints: durable writes, resume past a broken file, the stage a checkpoint came from, and
one clear line for an output folder that cannot be written."""
import importlib
import json

import pytest
import torch
from torch import nn

from omni import checkpoint
from omni.config import UserError
from omni.trainer import Task, TrainConfig, fit


def _task(stage: str = "") -> Task:
    """A linear model on a fixed regression problem: seconds to train, enough to write checkpoints."""
    torch.manual_seed(0)

    def get_batch(i):
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(i))
        return x, x.sum(1, keepdim=True)

    def loss(m, b):
        return nn.functional.mse_loss(m(b[0]), b[1]), {}

    return Task(nn.Linear(4, 1), get_batch, loss, lambda m: {"loss": loss(m, get_batch(999))[0].item()},
                stage=stage)


def _cfg(run_dir, **kw) -> TrainConfig:
    return TrainConfig(out_dir=str(run_dir), device="cpu", max_steps=6, warmup_steps=1, eval_every=100, log_every=100,
                       ckpt_every=2, keep_last=0, **kw)


@pytest.mark.parametrize("write", ["save", "text", "copy"])
def test_atomic_writes_fsync_before_rename(tmp_path, monkeypatch, write):
    """The data must be on the disk before the rename makes it the real file (else a power cut can
    leave an empty checkpoint under the real name); the folder is flushed after the rename."""
    events = []
    real_fsync, real_replace = checkpoint.os.fsync, checkpoint.os.replace
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(checkpoint.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b)))
    src = tmp_path / "src.txt"
    src.write_text("x")
    dst = tmp_path / "out.bin"
    {"save": lambda: checkpoint.atomic_save({"w": torch.ones(3)}, dst),
     "text": lambda: checkpoint.atomic_write_text("hello\n", dst),
     "copy": lambda: checkpoint.atomic_copy(src, dst)}[write]()
    assert events[:2] == ["fsync", "replace"]
    assert events.count("fsync") == 2  # the file, then the folder entry (Linux allows both)
    assert dst.stat().st_size > 0 and not list(tmp_path.glob("out.bin*.tmp"))


def test_resume_auto_skips_a_truncated_newest_checkpoint(tmp_path, capsys):
    fit(_task(), _cfg(tmp_path, stop_at_step=4), {})
    newest = checkpoint.step_path(tmp_path, 4)
    newest.write_bytes(newest.read_bytes()[:100])  # what a crash mid-write could leave
    capsys.readouterr()
    out = fit(_task(), _cfg(tmp_path, resume="auto"), {})
    said = capsys.readouterr().out
    assert f"skipping {newest}" in said
    assert f"resumed from {checkpoint.step_path(tmp_path, 2)} at step 2" in said
    assert out["step"] == 6
    assert torch.load(tmp_path / "latest.pt", weights_only=True)["step"] == 6


def test_resume_auto_with_no_readable_checkpoint_is_an_error(tmp_path, capsys):
    fit(_task(), _cfg(tmp_path, stop_at_step=4), {})
    for p in checkpoint.step_checkpoints(tmp_path):
        p.write_bytes(b"")
    with pytest.raises(UserError, match="none of its 2 step checkpoints can be read"):
        checkpoint.resolve_resume("auto", tmp_path)
    assert capsys.readouterr().out.count("skipping") == 2


def test_stage_is_written_and_checked(tmp_path):
    fit(_task("B"), _cfg(tmp_path), {"audio": {}, "model": {}})
    assert torch.load(tmp_path / "best.pt", weights_only=True)["stage"] == "B"
    assert json.loads((tmp_path / "meta.json").read_text())["stage"] == "B"
    assert checkpoint.load_stage_checkpoint(tmp_path / "best.pt", ("B", "C"))["stage"] == "B"
    with pytest.raises(UserError) as e:
        checkpoint.load_stage_checkpoint(tmp_path / "best.pt", "A")
    msg = str(e.value)
    assert "a stage B checkpoint (the audio encoder)" in msg
    assert "a stage A checkpoint (the Thinker), e.g. runs/thinker_tiny/best.pt" in msg
    with pytest.raises(UserError, match="stage B checkpoint"):  # a stage resumes only its own runs
        fit(_task("A"), _cfg(tmp_path, resume=str(tmp_path / "latest.pt")), {})


@pytest.mark.parametrize("config, stage", [({"data": {}, "model": {"vocab_size": 512}, "train": {}}, "A"),
                                           ({"data": {}, "audio": {}, "model": {"n_mels": 80}}, "B"),
                                           ({"vision": {}, "text": {}, "clip": {}}, "C"),
                                           ({"phase": "codec", "audio": {}, "codec": {}}, "D-codec"),
                                           ({"phase": "talker", "audio": {}, "codec": {}}, "D-talker"),
                                           ({"init": {}, "projector": {}, "train": {}}, "E"),
                                           ({"note": "?"}, "")])
def test_stage_of_checkpoints_written_before_the_field(tmp_path, config, stage):
    path = tmp_path / "old.pt"
    torch.save({"model": {}, "config": config}, path)
    assert checkpoint.checkpoint_stage(torch.load(path, weights_only=True)) == stage


def test_sampler_names_the_stage_of_a_wrong_checkpoint(tmp_path):
    from omni import sample

    path = tmp_path / "best.pt"
    torch.save({"model": {}, "config": {"data": {}, "audio": {}, "model": {"n_mels": 80}}}, path)
    with pytest.raises(UserError, match=r"stage B checkpoint \(the audio encoder\); this command needs a stage A"):
        sample.main([str(path)])


@pytest.mark.parametrize("module, extra", [("omni.speech_data", []), ("omni.shapes", []),
                                           ("omni.librispeech", ["--root", "."]),
                                           ("omni.coco", ["--captions", "c.json", "--images", "."])])
def test_data_commands_refuse_an_unwritable_out_in_one_line(tmp_path, module, extra, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a folder cannot be made under a file, even by root
    main = importlib.import_module(module).main
    with pytest.raises((UserError, SystemExit)) as e:
        main(["--out", str(blocker / "data"), *extra])
    said = str(e.value) if isinstance(e.value, UserError) else capsys.readouterr().err
    assert f"--out {blocker / 'data'}: cannot write there" in said

"""Configs: dataclasses hold every default, a JSON file picks a stage's values, the command line
overrides them.

A stage config is a dataclass whose fields are component dataclasses, for example

    @dataclass
    class TextStageConfig:
        data: TextDataConfig
        model: ThinkerConfig
        train: TrainConfig

and `configs/thinker_tiny.json` is nested the same way: {"model": {"d_model": 192}, ...}.
On the command line:

    python train_text.py --config configs/thinker_tiny.json --train.lr=1e-3 --model.n_layer 6
    python train_text.py --config configs/thinker_tiny.json --resume auto
    python train_text.py --debug        # a handful of steps with tiny sizes, to check a setup

A mistake (unknown key, wrong type, missing file) is a `UserError`: one line that names the key
or path and what to do, and exit code 2, never a traceback.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
import typing
from pathlib import Path

import torch

from omni.paths import repo_path


class UserError(Exception):
    """A mistake the user can fix. `run` prints it as one line and exits with `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _fields(cls) -> dict[str, tuple[dataclasses.Field, object]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _all_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for name, (_, tp) in _fields(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += _all_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _unknown(key: str, cls, where: str) -> UserError:
    near = difflib.get_close_matches(key, _all_keys(cls), n=1, cutoff=0.5)
    hint = f" (did you mean '{near[0]}'?)" if near else f" (valid keys: {', '.join(_all_keys(cls))})"
    return UserError(f"{where}: unknown config key '{key}'{hint}")


def _coerce(value, tp, key: str, where: str):
    """Check or convert one value to the field's type. Strings come from the command line."""
    origin = typing.get_origin(tp)
    want = origin or tp
    if isinstance(value, str) and want is not str:
        try:
            value = json.loads(value)  # "3" -> 3, "true" -> True, "[1, 2]" -> [1, 2]
        except json.JSONDecodeError:
            raise UserError(f"{where}: '{key}' must be {getattr(want, '__name__', want)}, got '{value}'") from None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise UserError(f"{where}: '{key}' must be {getattr(want, '__name__', want)}, "
                        f"got {json.dumps(value)}")
    return value


def _apply(obj, key: str, value, cls_root, where: str) -> None:
    """Set dotted `key` (like 'train.lr') on the nested dataclass `obj`."""
    *parents, leaf = key.split(".")
    for p in parents:
        if p not in _fields(type(obj)) or not dataclasses.is_dataclass(getattr(obj, p)):
            raise _unknown(key, cls_root, where)
        obj = getattr(obj, p)
    fields = _fields(type(obj))
    if leaf not in fields or dataclasses.is_dataclass(fields[leaf][1]):
        raise _unknown(key, cls_root, where)
    setattr(obj, leaf, _coerce(value, fields[leaf][1], key, where))


def _flatten(d: dict, cls, where: str, prefix: str = "") -> dict:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}, descending only into component dataclasses."""
    out, fields = {}, _fields(cls)
    for k, v in d.items():
        tp = fields[k][1] if k in fields else None
        if tp is not None and dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise UserError(f"{where}: '{prefix}{k}' must be an object of keys, got {json.dumps(v)}")
            out.update(_flatten(v, tp, where, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def read_json(path: str | Path, what: str = "file") -> dict:
    """Read a JSON object from `path` (relative to the repository root), or explain the problem."""
    p = repo_path(path)
    if not p.is_file():
        raise UserError(f"{path}: {what} not found (paths are relative to the repository root {p.parent})")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object at the top level")
    return data


def writable_dir(p: str | Path, what: str = "--out") -> Path:
    """Create folder `p` (under the repository root if relative) and check that files can be
    written in it; a folder that cannot be is one clear line (a UserError), not a traceback
    halfway through a data build."""
    d = repo_path(p)
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{what} {p}: cannot write there ({e.strerror or type(e).__name__}); "
                        "choose a folder you can write to") from None
    return d


def parse_args(cls, argv: list[str] | None = None, debug: dict | None = None):
    """Build a `cls` config from the defaults, `--config FILE`, `--debug` and `--key=value` flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = cls()
    config_file, overrides, use_debug = None, [], False
    while argv:
        arg = argv.pop(0)
        if not arg.startswith("--"):
            raise UserError(f"command line: unexpected argument '{arg}' (flags look like --train.lr=1e-3)")
        name, eq, value = arg[2:].partition("=")
        if name == "debug":
            use_debug = True
            continue
        if not eq:
            if not argv:
                raise UserError(f"command line: --{name} needs a value")
            value = argv.pop(0)
        if name == "config":
            config_file = value
        elif name == "resume":
            overrides.append(("train.resume", value))
        else:
            overrides.append((name, value))
    if config_file:
        for key, value in _flatten(read_json(config_file, "config file"), cls, config_file).items():
            _apply(cfg, key, value, cls, config_file)
    if use_debug:
        for key, value in (debug or {}).items():
            _apply(cfg, key, value, cls, "debug settings")
    for key, value in overrides:
        _apply(cfg, key, value, cls, "command line")
    try:
        _validate(cfg)
    except ValueError as e:  # its message starts with the key it is about: name where that key was set
        key = str(e).split(":", 1)[0]
        raise UserError(f"{'command line' if key in dict(overrides) else config_file or 'config'}: {e}") from None
    return cfg


def _validate(cfg) -> None:
    """Re-run each component's __post_init__ checks now that all values are set."""
    for f in dataclasses.fields(cfg):
        sub = getattr(cfg, f.name)
        if dataclasses.is_dataclass(sub) and hasattr(sub, "__post_init__"):
            try:
                sub.__post_init__()
            except ValueError as e:  # "ThinkerConfig.n_head: ..." -> "model.n_head: ...", the key users type
                raise ValueError(str(e).replace(f"{type(sub).__name__}.", f"{f.name}.")) from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict, where: str = "checkpoint"):
    """Rebuild a config saved with `to_dict` (for example from a checkpoint's metadata)."""
    cfg = cls()
    for key, value in _flatten(d, cls, where).items():
        _apply(cfg, key, value, cls, where)
    return cfg


def cli(main, argv: list[str] | None = None):
    """The entry point of the small command-line tools (data commands, the sampler): run
    `main(argv)` and turn a `UserError` into one line on stderr and a non-zero exit."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.code)


def cpu_threads(threads: int = 0) -> int:
    """Torch threads for a run: `threads` if given; else OMP_NUM_THREADS when the user (or a test) set
    it; else every core this process may run on (os.sched_getaffinity honours taskset and containers,
    where os.cpu_count() would count the whole machine)."""
    if threads:
        return threads
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run(main, cls, debug: dict | None = None, argv: list[str] | None = None):
    """The entry point of every stage script: parse the config, run `main`, and turn a
    `UserError` into one line on stderr and a non-zero exit. Under torchrun only rank 0 prints."""
    if int(os.environ.get("RANK", "0")) > 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    try:
        cfg = parse_args(cls, argv, debug)
        if hasattr(getattr(cfg, "train", None), "threads"):  # before any data work (features, codes)
            torch.set_num_threads(cpu_threads(cfg.train.threads))
        return main(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        print("interrupted: resume with --resume auto (continues from the newest step checkpoint)",
              file=sys.stderr)
        sys.exit(130)

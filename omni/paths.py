"""Where things live. Relative paths in configs and commands are relative to the repository root,
so a script behaves the same from whichever folder it is started."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root


def repo_path(p: str | Path) -> Path:
    """An absolute path: `p` itself if absolute, else `p` under the repository root."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else ROOT / p


def writable_dir(p: str | Path, what: str = "--out") -> Path:
    """Create folder `p` (under the repository root if relative) and check that files can be
    written in it; a folder that cannot be is one clear line (a UserError), not a traceback
    halfway through a data build."""
    from omni.config import UserError  # here, not at the top: omni.config itself imports this module

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

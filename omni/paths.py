"""Where things live. Relative paths in configs and commands are relative to the repository root,
so a script behaves the same from whichever folder it is started."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root


def repo_path(p: str | Path) -> Path:
    """An absolute path: `p` itself if absolute, else `p` under the repository root."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else ROOT / p


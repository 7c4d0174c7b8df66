"""Figures of stage E: one chat row drawn position by position, and a grid of test answers."""
from __future__ import annotations

from pathlib import Path

COLOURS = {"text": "#dddddd", "special": "#888888", "image": "#f4a261", "audio": "#2a9d8f"}


def plot_row(pieces: list[str], kinds: list[str], counted: list[int], out: Path, title: str = "") -> Path:
    """One box per position: its colour says what it holds (text, template token, image or audio
    frame), a thick black frame marks the tokens the loss counts, the label is the token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    per_line = 24
    lines = (len(pieces) + per_line - 1) // per_line
    fig, ax = plt.subplots(figsize=(14, 0.75 * lines + 1.2))
    for k, (piece, kind, c) in enumerate(zip(pieces, kinds, counted)):
        x, y = k % per_line, -(k // per_line)
        ax.add_patch(Rectangle((x, y), 0.95, 0.8, facecolor=COLOURS[kind], edgecolor="black" if c else "none",
                               linewidth=2.5 if c else 0))
        ax.text(x + 0.47, y + 0.4, piece, ha="center", va="center", fontsize=6.5, rotation=30 if len(piece) > 5 else 0)
    ax.set_xlim(-0.1, per_line)
    ax.set_ylim(-lines + 0.8, 1)
    ax.axis("off")
    handles = [Patch(facecolor=v, label=k) for k, v in COLOURS.items()]
    handles.append(Patch(facecolor="white", edgecolor="black", linewidth=2.5, label="counted in the loss"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.35), ncol=5, fontsize=8, frameon=False)
    ax.set_title(title, fontsize=9, pad=28)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_answers(records: list[dict], items: list[dict], manifest: Path, out: Path, n: int = 12) -> Path:
    """The first n test questions on distinct pictures: the picture, the question, the typed and the
    spoken answers, green when right and red when wrong (with the expected answer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    chosen, seen = [], set()
    for it in items:
        if it["picture"] not in seen and "typed_answer" in it:
            chosen.append(it)
            seen.add(it["picture"])
        if len(chosen) == n:
            break
    cols = 4
    rows = (len(chosen) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, it in zip(axes.flat, chosen):
        with Image.open(manifest.parent / records[it["picture"]]["image"]) as im:
            ax.imshow(im.convert("RGB"))
        lines = [it["q"]]
        modes = [m for m in ("typed", "spoken") if f"{m}_right" in it]
        for mode in modes:
            ok = it[f"{mode}_right"]
            lines.append(f"{mode}: {it[f'{mode}_answer']}" + ("" if ok else f" (not {it['a']})"))
        ax.set_title("\n".join(lines), fontsize=8,
                     color="green" if all(it[f"{m}_right"] for m in modes) else "red")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    """Draw one training row of stage E (picture + spoken question -> answer) for the book."""
    import argparse

    from omni.chat_template import AUDIO, ChatTemplate, user_parts
    from omni.paths import repo_path
    from omni.tokenizer import Tokenizer

    p = argparse.ArgumentParser(description="Draw one chat row of stage E, position by position.")
    p.add_argument("--tokenizer", default="runs/thinker_tiny/tokenizer.model", help="stage A's tokenizer")
    p.add_argument("--out", default="chapters/figures/omni_template.png", help="the PNG to write")
    a = p.parse_args(argv)
    t = ChatTemplate(Tokenizer(repo_path(a.tokenizer)))
    # the tiny config's order (data.question_first): the question, then the picture
    turns = [("user", user_parts(9, [(AUDIO, 14)], True)), ("assistant", ["purple"]),
             ("user", user_parts(9, ["where is the green circle?"], True)), ("assistant", ["top left"])]
    ids, mask = t.encode(turns)
    names = {t.image_id: "img", t.audio_id: "aud"}
    pieces = [names.get(i) or t.tok.sp.id_to_piece(i).replace("\n", "\\n").replace("\u2581", " ") for i in ids]
    title = ("two turns: a spoken question (14 audio frames, 0.56 s) then a picture, a typed question then a "
             "picture; the loss counts the framed tokens")
    return plot_row(pieces, t.kinds(ids), mask, repo_path(a.out), title)


if __name__ == "__main__":
    from omni.config import cli

    print(cli(main))

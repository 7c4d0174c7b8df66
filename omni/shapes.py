"""A tiny world of pictures: coloured shapes on a 3x3 grid, with captions and questions.

Stage C learns to see on this world and stage E asks questions about it. It is small enough to
learn on a CPU in minutes and rich enough to test generalisation: every picture holds one to
four objects, each with a shape, a colour, a size and a grid cell, and a few colour-shape pairs
(HELD_OUT) never occur in the training pictures. The test split is made only of pictures that
contain at least one of them, so a model that scores well there has learned "red" and
"triangle" as separate ideas, not memorised "red triangle" as one (the compositional test of
CLEVR, Johnson et al. 2017, and its CoGenT split).

    python -m omni.shapes --out data/shapes_tiny

writes PNGs and three manifests (train/val/test.jsonl), one JSON object a line:
{"image": "train/000000.png", "caption": "...", "questions": [{"q": ..., "a": ...}],
 "objects": [{"shape": ..., "colour": ..., "size": ..., "position": ...}]}
Image paths are relative to the manifest's folder. Training pictures come in families of four,
numbered by a "family" field: a picture and three copies in which one object has another shape,
which train_vision.py keeps in one batch as hard negatives. Each picture has its own random generator
seeded by (seed, split, index), so the data is the same on every machine and for every order.
"""
import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

# The shared vocabulary of the image world (stages B, C and E use these lists).
SHAPES = ["circle", "square", "triangle", "diamond", "star"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SIZES = ["small", "big"]
POSITIONS = ["top left", "top", "top right", "left", "centre", "right",
             "bottom left", "bottom", "bottom right"]  # 3x3 grid cells in reading order
COUNT_WORDS = ["one", "two", "three", "four"]  # COUNT_WORDS[n - 1] names n objects

# Colour-shape pairs that never appear in train or val pictures: one per colour, each shape
# at least once, so every word is still seen in training, only not these pairings.
HELD_OUT = [("red", "triangle"), ("green", "star"), ("blue", "circle"),
            ("yellow", "diamond"), ("purple", "square"), ("orange", "triangle")]

RGB = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220),
       "yellow": (235, 205, 30), "purple": (135, 55, 185), "orange": (245, 135, 25)}
RGB_TABLE = torch.tensor([RGB[c] for c in COLOURS], dtype=torch.float)  # (colours, 3), in COLOURS order
RADIUS = {"small": 0.3, "big": 0.45}  # object radius as a fraction of a grid cell's side
SUPERSAMPLE = 4  # draw 4x larger, then shrink: smooth edges without an antialiasing library
WHERE = {"top left": "at the top left", "top": "at the top", "top right": "at the top right",
         "left": "on the left", "centre": "in the centre", "right": "on the right",
         "bottom left": "at the bottom left", "bottom": "at the bottom",
         "bottom right": "at the bottom right"}  # how a caption says each cell


# ----------------------------------------------------------------------------- sampling

def sample_objects(rng: random.Random, must_hold_out: bool) -> list[dict]:
    """1-4 objects in distinct cells with distinct shapes (so "the circle" names one object).
    Train/val pictures avoid every HELD_OUT pair; test pictures contain at least one."""
    n = rng.randint(1, 4)
    shapes = rng.sample(SHAPES, n)
    cells = sorted(rng.sample(range(9), n))  # reading order keeps captions canonical
    forced = rng.randrange(n) if must_hold_out else -1
    objects = []
    for k, (shape, cell) in enumerate(zip(shapes, cells)):
        held = [c for c, s in HELD_OUT if s == shape]  # never empty: every shape has one
        if k == forced:
            colour = rng.choice(held)
        elif must_hold_out:
            colour = rng.choice(COLOURS)
        else:
            colour = rng.choice([c for c in COLOURS if c not in held])
        objects.append({"shape": shape, "colour": colour, "size": rng.choice(SIZES),
                        "position": POSITIONS[cell]})
    return objects


def reshape(objects: list[dict], rng: random.Random) -> list[dict]:
    """A near copy that differs in one thing: one object's shape (or, when no other shape is
    allowed, its colour). Training families (a picture and its edits, in one batch) are hard
    negatives: a caption can only be matched to its own picture by looking at the very attribute
    that was changed, so the model cannot get by on colour and place alone."""
    objects = [dict(o) for o in objects]
    o = rng.choice(objects)
    shapes = [s for s in SHAPES if s not in {x["shape"] for x in objects} and (o["colour"], s) not in HELD_OUT]
    if shapes:
        o["shape"] = rng.choice(shapes)
    else:  # four objects leave one free shape, and it can be a held-out pairing: change the colour
        o["colour"] = rng.choice([c for c in COLOURS if c != o["colour"] and (c, o["shape"]) not in HELD_OUT])
    return objects


def caption(objects: list[dict]) -> str:
    """"a big red circle at the top left and a small blue star in the centre"."""
    parts = [f"a {o['size']} {o['colour']} {o['shape']} {WHERE[o['position']]}" for o in objects]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def questions(objects: list[dict], rng: random.Random, avoid_held_out: bool) -> list[dict]:
    """Question-answer pairs for stage E, all answerable from the objects alone."""
    qa = [{"q": "how many shapes are there?", "a": COUNT_WORDS[len(objects) - 1]}]
    for o in objects:
        qa += [{"q": f"what colour is the {o['shape']}?", "a": o["colour"]},
               {"q": f"what size is the {o['shape']}?", "a": o["size"]},
               {"q": f"where is the {o['colour']} {o['shape']}?", "a": o["position"]},
               {"q": f"what shape is {WHERE[o['position']]}?", "a": o["shape"]}]
    o = rng.choice(objects)
    qa.append({"q": f"is there {article(o['colour'])} {o['colour']} {o['shape']}?", "a": "yes"})
    present = {(o["colour"], o["shape"]) for o in objects}
    absent = [(c, s) for c in COLOURS for s in SHAPES
              if (c, s) not in present and not (avoid_held_out and (c, s) in HELD_OUT)]
    c, s = rng.choice(absent)
    qa.append({"q": f"is there {article(c)} {c} {s}?", "a": "no"})
    return qa


def world_lines(n_pictures: int, seed: int = 0) -> list[str]:
    """The text of n_pictures random training-style pictures (no held-out pair): each caption,
    question and answer as a line. Stage A adds these to its tokenizer's training text, so that the
    words the later stages read and speak ("triangle", "purple", "top left") are whole tokens."""
    rng, lines = random.Random(seed), []
    for _ in range(n_pictures):
        objects = sample_objects(rng, must_hold_out=False)
        lines.append(caption(objects))
        lines += [line for qa in questions(objects, rng, avoid_held_out=True) for line in (qa["q"], qa["a"])]
    return lines


def attribute_prompts(n_count: int = 100, seed: int = 0) -> dict[str, dict[str, list[str]]]:
    """Prompts for zero-shot attribute tests, {attribute: {class: [captions]}}. The text encoder
    only ever reads full captions, so a class is described by many captions that agree on it and
    vary in everything else (CLIP's prompt ensembling): "red" is every one-object caption with a
    red shape in it, "two" is n_count random two-object captions."""
    one = [{"shape": s, "colour": c, "size": z, "position": p}
           for s in SHAPES for c in COLOURS for z in SIZES for p in POSITIONS]
    rng = random.Random(seed)
    counts = {}
    for n, word in enumerate(COUNT_WORDS, 1):
        counts[word] = [caption([{"shape": s, "colour": rng.choice(COLOURS), "size": rng.choice(SIZES),
                                  "position": POSITIONS[p]}
                                 for s, p in zip(rng.sample(SHAPES, n), sorted(rng.sample(range(9), n)))])
                        for _ in range(n_count)]
    return {"colour": {c: [caption([o]) for o in one if o["colour"] == c] for c in COLOURS},
            "shape": {s: [caption([o]) for o in one if o["shape"] == s] for s in SHAPES},
            "count": counts}


def attribute_labels(objects: list[dict]) -> dict[str, str | None]:
    """The true class of a picture for each zero-shot test. Colour and shape are asked only of
    one-object pictures, where they have a single answer."""
    single = len(objects) == 1
    return {"colour": objects[0]["colour"] if single else None,
            "shape": objects[0]["shape"] if single else None,
            "count": COUNT_WORDS[len(objects) - 1]}


# ----------------------------------------------------------------------------- drawing

def polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Corner points of a shape of circumradius r centred at (cx, cy); y grows downwards."""
    def ring(n, radii, start):
        return [(cx + radii[k % len(radii)] * math.cos(start + 2 * math.pi * k / n),
                 cy + radii[k % len(radii)] * math.sin(start + 2 * math.pi * k / n)) for k in range(n)]
    if shape == "square":
        return ring(4, [r], math.pi / 4)  # corners at 45 degrees: an upright square
    if shape == "triangle":
        return ring(3, [r * 1.1], -math.pi / 2)  # apex up, a little larger so areas match
    if shape == "diamond":
        return ring(4, [r * 1.05], -math.pi / 2)
    if shape == "star":
        return ring(10, [r * 1.15, r * 0.5], -math.pi / 2)
    raise ValueError(f"unknown shape {shape!r}")


def jittered(colour: str, rng: random.Random) -> tuple[int, ...]:
    """The colour's RGB with a little random shift per channel, as every object is drawn."""
    return tuple(min(255, max(0, v + rng.randint(-18, 18))) for v in RGB[colour])


def render(objects: list[dict], rng: random.Random, size: int = 48) -> Image.Image:
    """Draw the objects on a pale background. Small jitters in background, colour and position
    make the model learn colour and place categories rather than exact pixel values."""
    s = size * SUPERSAMPLE
    bg = tuple(rng.randint(225, 250) for _ in range(3))
    img = Image.new("RGB", (s, s), bg)
    draw = ImageDraw.Draw(img)
    cell = s / 3
    for o in objects:
        row, col = divmod(POSITIONS.index(o["position"]), 3)
        jitter = 0.05 * cell
        cx = (col + 0.5) * cell + rng.uniform(-jitter, jitter)
        cy = (row + 0.5) * cell + rng.uniform(-jitter, jitter)
        r = RADIUS[o["size"]] * cell * rng.uniform(0.92, 1.08)
        fill = jittered(o["colour"], rng)
        if o["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(polygon(o["shape"], cx, cy, r), fill=fill)
    return img.resize((size, size), Image.BOX)


def recolour(pixels: torch.Tensor, objects: list[dict], k: int, fill: tuple[int, ...]) -> torch.Tensor:
    """Repaint objects[k] of a rendered picture (3, H, W) uint8 with the RGB `fill`, as if it had
    been drawn in that colour: a colour-edit hard negative made on the fly, without drawing again.
    It works because a drawn picture is a box-filtered mix of two colours: each pixel of the object
    is bg + a * (old - bg), a in [0, 1] the share of it the object covers. The object's own colour
    is its most saturated pixel near its cell's centre (no neighbour reaches there). A pixel is
    repainted if it lies on the line from background to that colour, in the object's cell or
    within 2 pixels of it (a big star's point reaches ~0.11 of a cell past its own) where our
    colour explains it better than that cell's object's: background and other objects stay."""
    H, W = pixels.shape[1:]
    row, col = divmod(POSITIONS.index(objects[k]["position"]), 3)
    r0, r1 = max(0, row * H // 3 - 2), min(H, -(-(row + 1) * H // 3) + 2)  # the cell and 2 pixels around it
    c0, c1 = max(0, col * W // 3 - 2), min(W, -(-(col + 1) * W // 3) + 2)
    x = pixels[:, r0:r1, c0:c1].float()  # (3, h, w): all that can change
    bg = pixels[:, [0, 0, -1, -1], [0, -1, 0, -1]].float().median(1).values[:, None, None]  # corners: background
    ys = torch.arange(r0, r1, dtype=torch.float)[:, None] * 3 / H  # (h, 1) pixel rows in cells
    xs = torch.arange(c0, c1, dtype=torch.float)[None, :] * 3 / W  # (1, w)
    core = ((ys - row - 0.5).abs() < 0.2) & ((xs - col - 0.5).abs() < 0.2)  # (h, w): inside every shape
    d = x - bg  # (3, h, w)
    u = d[:, core][:, (d[:, core] ** 2).sum(0).argmax()][:, None, None]  # (3, 1, 1): old colour - bg

    def off_line(u):  # (3, ...) colour minus background -> (h, w) share along u, distance from the line
        a = ((d * u).sum(0) / (u * u).sum(0).clamp(min=1.0)).clamp(0, 1)
        return a, (d - a * u).norm(dim=0)

    a, off = off_line(u)
    cell = (ys.long() * 3 + xs.long()).clamp(max=8)  # (h, w): the grid cell of each pixel
    theirs = torch.full((9, 3), float("nan"))  # nominal colour of the object in each cell (nan: empty)
    for o in objects:
        theirs[POSITIONS.index(o["position"])] = RGB_TABLE[COLOURS.index(o["colour"])]
    off_theirs = off_line(theirs[cell].permute(2, 0, 1) - bg)[1]  # (h, w); nan in empty cells
    same = (theirs[cell] == RGB_TABLE[COLOURS.index(objects[k]["colour"])]).all(-1)
    # in a neighbour's cell, a pixel is ours only if our colour explains it better than theirs does
    region = (cell == row * 3 + col) | (~same & ~(off_theirs <= off))
    on_line = off < 12  # RGB distance off the line: rounding ~1, a mix with another colour more
    new = bg + a * (torch.tensor(fill, dtype=torch.float)[:, None, None] - bg)
    out = pixels.clone()
    out[:, r0:r1, c0:c1] = torch.where(region & on_line, new.round().clamp(0, 255), x).to(pixels.dtype)
    return out


def make_example(seed: int, split: str, index: int, size: int = 48,
                 family: int = 1) -> tuple[Image.Image, dict]:
    """One picture and its manifest record (image path left to the caller). With family > 1,
    pictures come in runs of `family`: a base picture, then copies reshaped by `reshape`."""
    test = split == "test"
    base = random.Random(f"{seed}/{split}/family{index // family}")  # a str seed is hashed: stable
    objects = sample_objects(base, must_hold_out=test)
    rng = random.Random(f"{seed}/{split}/{index}")
    if index % family:
        objects = reshape(objects, rng)
    record = {"caption": caption(objects), "questions": questions(objects, rng, not test),
              "objects": objects}
    if family > 1:
        record["family"] = index // family  # pictures of one family share a training batch
    return render(objects, rng, size), record


def build(out: str | Path, n_train: int = 20000, n_val: int = 1000, n_test: int = 1000,
          seed: int = 0, size: int = 48, family: int = 4) -> dict[str, int]:
    """Write out/{split}/NNNNNN.png and out/{split}.jsonl for the three splits. Only training
    pictures come in families; val and test pictures are independent draws."""
    out = Path(out)
    counts = {}
    for split, n in [("train", n_train), ("val", n_val), ("test", n_test)]:
        (out / split).mkdir(parents=True, exist_ok=True)
        with open(out / f"{split}.jsonl.tmp", "w") as f:
            for i in range(n):
                img, record = make_example(seed, split, i, size, family if split == "train" else 1)
                name = f"{split}/{i:06d}.png"
                img.save(out / name, compress_level=1)
                f.write(json.dumps({"image": name, **record}) + "\n")
        (out / f"{split}.jsonl.tmp").replace(out / f"{split}.jsonl")  # atomic: no half manifests
        counts[split] = n
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Generate the tiny shapes world (PNGs + manifests).")
    p.add_argument("--out", default="data/shapes_tiny", help="output folder")
    p.add_argument("--n-train", type=int, default=20000, help="training pictures")
    p.add_argument("--n-val", type=int, default=1000, help="validation pictures (seen pairs)")
    p.add_argument("--n-test", type=int, default=1000, help="test pictures (held-out pairs)")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--image-size", type=int, default=48, help="picture side in pixels")
    p.add_argument("--family", type=int, default=4, help="training pictures per family (base + edits)")
    a = p.parse_args(argv)
    from omni.config import UserError, writable_dir
    for flag, value in (("--n-train", a.n_train), ("--n-val", a.n_val), ("--n-test", a.n_test),
                        ("--image-size", a.image_size), ("--family", a.family)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    from omni.paths import repo_path
    writable_dir(a.out)  # a folder that cannot be written is one line before any picture is drawn
    t0 = time.time()
    counts = build(repo_path(a.out), a.n_train, a.n_val, a.n_test, a.seed, a.image_size, a.family)
    print(f"wrote {counts} to {a.out} in {time.time() - t0:.1f}s; held-out pairs (test only): "
          + ", ".join(f"{c} {s}" for c, s in HELD_OUT))


if __name__ == "__main__":
    from omni.config import cli

    cli(main)

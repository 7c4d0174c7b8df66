"""Stage C: the vision encoder learns to see, by matching pictures to their captions (CLIP).

What it teaches: a Vision Transformer (patch embedding, positions, pre-norm encoder, 2x2 token
merging as in Qwen2.5-VL); a small text encoder on the Thinker's own tokenizer; the symmetric
contrastive loss with a learned temperature; hard negatives; and how to measure what a
picture embedding knows: retrieval among N candidates and zero-shot attribute accuracy, on
pictures made of colour-shape pairs the model never saw. Stage E reuses this encoder (without
the text side) as the Thinker's eyes.

    python -m omni.shapes --out data/shapes_tiny                        # the pictures, ~30 seconds
    python train_vision.py --config configs/vision_tiny.json            # ~4 minutes on 2 CPU cores
    python train_vision.py --config configs/vision_tiny.json --resume auto
    python train_vision.py --debug                                      # a few steps, seconds

It needs stage A's tokenizer (data.tokenizer, written by train_text.py). The run directory
(train.out_dir) holds checkpoints, log.jsonl, curves.png, retrievals.png and metrics.json.
Chapter: chapters/05_stage_c_vision.md.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from omni import clip, config, shapes
from omni.clip import CLIP, ClipConfig, TextConfig
from omni.paths import repo_path
from omni.tokenizer import Tokenizer
from omni.trainer import Task, TrainConfig, fit
from omni.vision import VisionConfig, load_image_manifest


@dataclass
class VisionDataConfig:
    train: str = "data/shapes_tiny/train.jsonl"  # training manifest (relative to the repository root)
    val: str = "data/shapes_tiny/val.jsonl"  # held-out pictures of colour-shape pairs seen in training
    test: str = "data/shapes_tiny/test.jsonl"  # held-out pictures that contain pairs never seen in training
    tokenizer: str = "runs/thinker_tiny/tokenizer.model"  # the Thinker's tokenizer (stage A)
    candidates: int = 10  # N: retrieval picks the right one among N pictures/captions with distinct captions
    eval_images: int = 0  # pictures per held-out split at each evaluation (0 = all)
    samples: int = 2  # test captions printed with the picture the model retrieves, at each evaluation
    recolour: float = 0.0  # share of each batch replaced by colour-edited copies of their neighbours (0-0.5)

    def __post_init__(self):
        if self.candidates < 2:
            raise ValueError(f"data.candidates must be at least 2, got {self.candidates}")
        if not 0 <= self.recolour <= 0.5:
            raise ValueError(f"data.recolour must be between 0 and 0.5, got {self.recolour}")


@dataclass
class VisionStageConfig:
    data: VisionDataConfig = field(default_factory=VisionDataConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/vision_tiny"))


# --debug: the same code path with toy sizes and a few steps.
DEBUG = {"vision.d_model": 32, "vision.n_layer": 1, "vision.n_head": 2, "vision.merge_dim": 32,
         "text.d_model": 32, "text.n_layer": 1, "text.n_head": 2, "clip.embed_dim": 32, "data.eval_images": 60,
         "data.samples": 1, "train.max_steps": 6, "train.batch_size": 16, "train.warmup_steps": 2,
         "train.eval_every": 3, "train.log_every": 2, "train.ckpt_every": 3, "train.out_dir": "runs/debug_vision",
         "train.overwrite": True}


def main(cfg: VisionStageConfig) -> dict:
    # 1. Config ------------------------------------------------------------------------------
    print(json.dumps(config.to_dict(cfg), indent=2))
    run_dir = repo_path(cfg.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    # 2. Data: pictures in memory, captions as the Thinker's token ids ----------------------------
    tok_path = repo_path(cfg.data.tokenizer)
    if not tok_path.is_file():
        raise config.UserError(f"data.tokenizer: {cfg.data.tokenizer} not found; run stage A first (python "
                               "train_text.py --config configs/thinker_tiny.json) or point it at a tokenizer.model")
    tok = Tokenizer(tok_path)

    def load(name: str) -> dict:
        records, images = load_image_manifest(repo_path(getattr(cfg.data, name)), cfg.vision.image_size)
        texts = [rec.get("captions") or [rec["caption"]] for rec in records]  # COCO has several per picture
        flat = [t for ts in texts for t in ts]
        ids, lengths, cut = clip.encode_captions(tok, flat, cfg.text.max_len)
        if cut:
            print(f"{getattr(cfg.data, name)}: {cut} of {len(flat)} captions cut to text.max_len={cfg.text.max_len}")
        first = torch.tensor([0] + [len(ts) for ts in texts]).cumsum(0)  # record k owns rows first[k]:first[k+1]
        same: dict[str, int] = {}  # equal captions get equal ids: the loss treats them as one (multi-positive)
        caption_id = torch.tensor([same.setdefault(t, len(same)) for t in flat])
        return {"records": records, "images": images, "ids": ids, "lengths": lengths, "first": first,
                "caption_id": caption_id, "main": first[:-1], "texts": flat}

    sets = {name: load(name) for name in ("train", "val", "test")}
    train, B = sets["train"], cfg.train.batch_size
    families: dict[int, list[int]] = {}  # a picture and its reshaped copies share a batch (hard negatives)
    for k, rec in enumerate(train["records"]):
        families.setdefault(rec.get("family", -1 - k), []).append(k)
    families = list(families.values())
    if len(train["records"]) < B:
        raise config.UserError(f"{cfg.data.train}: {len(train['records'])} pictures, fewer than train.batch_size ({B})")
    print(f"data: {len(train['records'])} train pictures in {len(families)} families, "
          f"{len(sets['val']['records'])} val, {len(sets['test']['records'])} test; "
          f"longest caption {int(train['lengths'].max())} tokens")
    attributes = all("objects" in rec for s in sets.values() for rec in s["records"][:100])
    prompts = {a: {c: clip.encode_captions(tok, ps, cfg.text.max_len)[:2] for c, ps in classes.items()}
               for a, classes in shapes.attribute_prompts().items()} if attributes else {}

    @lru_cache(maxsize=1)
    def epoch_order(epoch: int) -> list[int]:
        """Families shuffled for one epoch (a pure function of seed and epoch), then flattened."""
        g = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
        return [k for f in torch.randperm(len(families), generator=g).tolist() for k in families[f]]

    def get_batch(i: int):
        per_epoch = len(train["records"]) // B
        order = epoch_order(i // per_epoch)
        ks = torch.tensor(order[(i % per_epoch) * B: (i % per_epoch + 1) * B])
        g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + i)  # caption choice for batch i only
        span = train["first"][ks + 1] - train["first"][ks]
        rows = train["first"][ks] + (torch.rand(len(ks), generator=g) * span).long()
        images, ids, lengths = train["images"][ks], train["ids"][rows], train["lengths"][rows]
        texts = [train["texts"][r] for r in rows.tolist()]
        # Optional colour hard negatives (data.recolour; off in the tiny recipe, see chapter 5):
        # families differ in one shape only. With it, some odd places j get a copy of picture j - 1
        # with one object repainted (never into a held-out pair), so the two sit in one batch.
        rng = random.Random(f"{cfg.train.seed}/recolour/{i}")
        for j in range(1, len(ks), 2):
            objects = train["records"][ks[j - 1]].get("objects")
            if not objects or rng.random() >= 2 * cfg.data.recolour:
                continue
            o = rng.randrange(len(objects))
            colours = [c for c in shapes.COLOURS
                       if c != objects[o]["colour"] and (c, objects[o]["shape"]) not in shapes.HELD_OUT]
            edited = [dict(x, colour=rng.choice(colours)) if n == o else x for n, x in enumerate(objects)]
            images[j] = shapes.recolour(images[j - 1], objects, o, shapes.jittered(edited[o]["colour"], rng))
            texts[j] = shapes.caption(edited)
            ids[j], lengths[j] = (t[0] for t in clip.encode_captions(tok, texts[j:j + 1], cfg.text.max_len)[:2])
        same: dict[str, int] = {}  # equal captions get equal ids: the loss treats them as one (multi-positive)
        caption_id = torch.tensor([same.setdefault(t, len(same)) for t in texts])
        return images, ids[:, :int(lengths.max())], lengths, caption_id

    # 3. Model -------------------------------------------------------------------------------
    torch.manual_seed(cfg.train.seed)
    model = CLIP(cfg.vision, cfg.text, cfg.clip, tok.vocab_size)

    # 4. What trains: both encoders, both projections and the temperature ------------------------
    n_params = sum(p.numel() for p in model.parameters())
    n_vision = sum(p.numel() for p in model.vision.parameters())
    print(f"parameters: {n_params:,} trainable / {n_params:,} total ({n_vision:,} in the vision encoder)")

    def loss_fn(m, batch):
        images, ids, lengths, caption_id = batch
        img, txt, scale = m(images.float() / 255, ids, lengths)
        return clip.clip_loss(img, txt, scale, caption_id), {"temperature": 1 / scale.item()}

    def held_out(name: str):
        """The first eval_images pictures of a split, their first captions as ids, and as text."""
        s = sets[name]
        n = min(len(s["records"]), cfg.data.eval_images or len(s["records"]))
        rows = s["main"][:n]
        return s["images"][:n], s["ids"][rows], s["lengths"][rows], s["caption_id"][rows], s["records"][:n]

    def evaluate(m):
        out, scale = {}, m.scale()
        prompt_emb = {a: {c: clip.embed_texts(m, *p) for c, p in classes.items()} for a, classes in prompts.items()}
        for name in ("val", "test"):
            images, ids, lengths, caption_id, records = held_out(name)
            img, txt = clip.embed_images(m, images), clip.embed_texts(m, ids, lengths)
            if name == "val":  # the training loss on held-out pairs, in batches as in training
                chunks = [clip.clip_loss(img[j:j + B], txt[j:j + B], scale, caption_id[j:j + B]).item()
                          for j in range(0, len(img), B)]
                out["loss"] = sum(chunks) / len(chunks)
            captions = [r["caption"] for r in records]
            groups = clip.retrieval_groups(captions, cfg.data.candidates)
            acc = clip.retrieval_accuracy(img, txt, groups)
            out[f"{name}_t2i"], out[f"{name}_i2t"] = acc["t2i"], acc["i2t"]
            for a, emb in prompt_emb.items():
                labels = [shapes.attribute_labels(r["objects"])[a] for r in records]
                out[f"{name}_{a}"] = clip.zero_shot_accuracy(img, emb, labels, scale.item())
                if name == "test" and a in ("colour", "shape"):  # which unseen pairs fail, and as what
                    pred = clip.zero_shot_predict(img, emb, scale.item())
                    wrong = Counter(f"{r['objects'][0]['colour']} {r['objects'][0]['shape']} as {p}"
                                    for r, p, y in zip(records, pred, labels) if y is not None and p != y)
                    print(f"  test | {a} mistakes: {', '.join(f'{k} x{n}' for k, n in wrong.most_common()) or 'none'}")
            if name == "test":
                for g in groups[:cfg.data.samples]:
                    top = (txt[g[0]] @ img[g].T).argmax().item()
                    print(f"  test | caption:  {captions[g[0]]}\n       | top pick: {captions[g[top]]} "
                          f"({'right' if top == 0 else 'wrong'}, among {len(g)})")
        return out

    # 5. The loop ------------------------------------------------------------------------------
    task = Task(model, get_batch, loss_fn, evaluate, best_metric="loss", best_mode="min",
                count=lambda b: len(b[0]), unit="img", stage="C")
    final = fit(task, cfg.train, config.to_dict(cfg))

    # 6. Final evaluation and summary ------------------------------------------------------------
    final["params"] = n_params
    (run_dir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
    if "test_t2i" in final:
        images, ids, lengths, _, records = held_out("test")
        clip.plot_retrievals(model, images, ids, lengths, [r["caption"] for r in records], cfg.data.candidates,
                             run_dir / "retrievals.png")
        attrs = "".join(f" | {a} {final[f'val_{a}']:.1%} / {final[f'test_{a}']:.1%}" for a in prompts)
        print(f"held-out (val / test): caption->image {final['val_t2i']:.1%} / {final['test_t2i']:.1%} | "
              f"image->caption {final['val_i2t']:.1%} / {final['test_i2t']:.1%}{attrs} | {final['train_seconds']:.0f}s")
    return final


if __name__ == "__main__":
    config.run(main, VisionStageConfig, DEBUG)

"""The ViT, the 2x2 merger, the contrastive loss and the metrics on hand-made cases, and pictures
that are not plain RGB or not pictures at all."""
import json
import math

import pytest
import torch
from PIL import Image

from omni.clip import CLIP, ClipConfig, TextConfig, clip_loss, retrieval_accuracy, retrieval_groups, zero_shot_accuracy
from omni.config import UserError
from omni.vision import PatchMerger, VisionConfig, VisionEncoder, load_image, load_image_manifest


def test_patch_tokens_merged_tokens_and_pooled_shapes():
    x = torch.rand(2, 3, 48, 48)
    tokens, pooled = VisionEncoder(VisionConfig(d_model=32, n_layer=1, n_head=2))(x)
    assert tokens.shape == (2, 36, 32) and pooled.shape == (2, 32)  # (48 / 8)^2 patches
    tokens, pooled = VisionEncoder(VisionConfig(d_model=32, n_layer=1, n_head=2, merge_dim=24))(x)
    assert tokens.shape == (2, 9, 24) and pooled.shape == (2, 24)  # one token per 2x2 block
    assert torch.allclose(pooled, tokens.mean(1))


def test_merger_concatenates_the_four_neighbours_of_each_block():
    m = PatchMerger(d_model=1, d_out=4, grid=4)
    m.ln, m.mlp = torch.nn.Identity(), torch.nn.Identity()  # see the raw concatenation
    x = torch.arange(16.0).view(1, 16, 1)  # a 4x4 grid of tokens numbered in row-major order
    assert m(x)[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_bad_vision_config_is_a_user_error():
    with pytest.raises(UserError, match="multiple of vision.patch_size"):
        VisionConfig(image_size=50, patch_size=8)


def test_contrastive_loss_on_a_hand_made_case():
    e = torch.eye(2)  # picture i matches caption i exactly, and is orthogonal to the other
    # logits [[1, 0], [0, 1]]: each row is a 2-way softmax with the right answer one logit ahead
    assert clip_loss(e, e, torch.tensor(1.0)).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # the two captions are the same text: both columns are right, half the target each
    same = clip_loss(e, e, torch.tensor(1.0), torch.tensor([7, 7])).item()
    assert same == pytest.approx(math.log(1 + math.e) - 0.5, abs=1e-6)
    swapped = clip_loss(e, e.flip(0), torch.tensor(10.0)).item()  # every pair wrong, confidently
    assert swapped == pytest.approx(10 + math.log(1 + math.exp(-10)), abs=1e-5)


def test_temperature_is_learned_and_clamped():
    m = CLIP(VisionConfig(d_model=16, n_layer=1, n_head=2), TextConfig(d_model=16, n_layer=1, n_head=2),
             ClipConfig(embed_dim=8, init_temperature=0.07, max_logit_scale=20.0), vocab_size=50)
    assert m.scale().item() == pytest.approx(1 / 0.07, rel=1e-5) and m.logit_scale.requires_grad
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    assert m.scale().item() == pytest.approx(20.0)


def test_retrieval_groups_hold_distinct_captions_and_accuracy_counts_both_ways():
    caps = ["a", "b", "a", "c", "d", "b", "e"]
    assert retrieval_groups(caps, 2) == [[0, 1], [3, 4]]  # duplicates dropped, remainder too
    img = torch.eye(4)
    txt = torch.eye(4)[[0, 1, 3, 2]]  # captions 2 and 3 point at each other's picture
    acc = retrieval_accuracy(img, txt, [[0, 1], [2, 3]])
    assert acc == {"t2i": 0.5, "i2t": 0.5}


def test_zero_shot_picks_the_class_whose_prompts_fit_best():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    prompts = {"red": torch.tensor([[1.0, 0.0], [0.9, 0.1]]), "blue": torch.tensor([[0.0, 1.0]])}
    assert zero_shot_accuracy(img, prompts, ["red", "blue", None], scale=10.0) == 1.0
    assert zero_shot_accuracy(img, prompts, ["blue", "blue", "red"], scale=10.0) == pytest.approx(2 / 3)


def test_grayscale_palette_rgba_and_odd_sizes_become_rgb_squares(tmp_path):
    Image.new("L", (20, 20), 100).save(tmp_path / "gray.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(tmp_path / "clear.png")  # fully transparent red
    Image.new("P", (20, 20)).save(tmp_path / "pal.png")
    Image.new("RGB", (40, 20), (0, 0, 255)).save(tmp_path / "wide.jpg")
    gray = load_image(tmp_path / "gray.png", 8)
    assert gray.shape == (3, 8, 8) and gray.dtype == torch.uint8 and (gray == 100).all()
    assert (load_image(tmp_path / "clear.png", 8) == 255).all()  # laid on white, not black
    assert load_image(tmp_path / "pal.png", 8).shape == (3, 8, 8)
    wide = load_image(tmp_path / "wide.jpg", 8)
    assert wide.shape == (3, 8, 8) and wide[2].float().mean() > 200


def test_broken_picture_is_a_user_error_and_is_skipped_and_counted_in_a_manifest(tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError, match="broken.png: not a readable image"):
        load_image(tmp_path / "broken.png", 8)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "ok.png")
    lines = [json.dumps({"image": "ok.png", "caption": "a red square"}), "{not json",
             json.dumps({"image": "broken.png", "caption": "x"}), json.dumps({"image": "gone.png", "caption": "y"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    records, images = load_image_manifest(tmp_path / "m.jsonl", 8)
    assert [r["caption"] for r in records] == ["a red square"] and images.shape == (1, 3, 8, 8)
    assert "skipped 3 bad line(s); first: line 2" in capsys.readouterr().out
    records2, images2 = load_image_manifest(tmp_path / "m.jsonl", 8)  # now from the cache, same result
    assert records2 == records and torch.equal(images2, images)
    assert "skipped 3" in capsys.readouterr().out
    (tmp_path / "bad.jsonl").write_text(lines[2] + "\n")
    with pytest.raises(UserError, match="bad.jsonl: no usable lines"):
        load_image_manifest(tmp_path / "bad.jsonl", 8)

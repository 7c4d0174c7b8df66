"""The chat template: how a conversation with pictures and sound becomes one row of token ids.

We use ChatML, the format of Qwen2.5 and Qwen2.5-Omni, with the special tokens stage A reserved
in its tokenizer (omni/tokenizer.py, SPECIAL_TOKENS):

    <|im_start|>user\\n<|image_start|><|image|>...<|image|><|image_end|>what colour is the star?<|im_end|>\\n
    <|im_start|>assistant\\nred<|im_end|>\\n

A picture or a sound in a message is first one marker; `encode` expands it to as many
placeholder tokens as the encoder gives feature frames (9 for a 48-pixel picture after the 2x2
merge, 25 per second of audio), between start and end tokens that tell the Thinker what kind
of input follows. The Thinker embeds the row of ids as usual, and `splice` then writes the
projected features into the placeholder positions, all positions of a batch in one
`masked_scatter` (as LLaVA and Qwen2.5-Omni in Hugging Face transformers do). The Thinker runs
on the result as if it were a row of token embeddings.

The loss mask marks the tokens the model is trained to write: the assistant's reply and its
closing <|im_end|> (so it learns when to stop). The user's words, the pictures, the sounds and
the template's own tokens are context only: they are given, never predicted.
"""
from __future__ import annotations

import torch

from omni.tokenizer import Tokenizer

IMAGE, AUDIO = "image", "audio"  # a message part ("image", n) or ("audio", n): n feature frames


def user_parts(image_frames: int, question: list, question_first: bool) -> list:
    """A user turn about a picture: the picture's part and the question's parts (typed text, a spoken
    clip, or both), in the run's order. With question_first the Thinker's causal attention lets
    every picture token already see what is asked (training and chat must use the same order)."""
    picture = [(IMAGE, image_frames)]
    return [*question, *picture] if question_first else [*picture, *question]


class ChatTemplate:
    def __init__(self, tok: Tokenizer):
        self.tok = tok
        t = tok.token_id
        self.im_start, self.im_end, self.nl = t("<|im_start|>"), t("<|im_end|>"), t("\n")
        self.span = {IMAGE: (t("<|image_start|>"), t("<|image|>"), t("<|image_end|>")),
                     AUDIO: (t("<|audio_start|>"), t("<|audio|>"), t("<|audio_end|>"))}
        self.image_id, self.audio_id = self.span[IMAGE][1], self.span[AUDIO][1]
        self._cache: dict[str, list[int]] = {}  # text -> ids: the same questions come back all the time

    def text_ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tok.encode(text)
        return self._cache[text]

    def part_ids(self, part) -> list[int]:
        """A str (text), a list of ids (already tokenized text), or (IMAGE | AUDIO, n frames)."""
        if isinstance(part, str):
            return self.text_ids(part)
        if isinstance(part, tuple):
            kind, n = part
            start, placeholder, end = self.span[kind]
            return [start] + [placeholder] * n + [end]
        return list(part)

    def encode(self, turns: list[tuple[str, list]], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """turns: [(role, [parts])], role "user" or "assistant". Returns (ids, loss mask), the mask 1
        on every assistant reply token and its <|im_end|>. With add_generation_prompt the row
        ends in "<|im_start|>assistant\\n", ready for the model to write the reply."""
        ids, mask = [], []
        for role, parts in turns:
            head = [self.im_start, *self.text_ids(role), self.nl]
            body = [i for p in parts for i in self.part_ids(p)] + [self.im_end]
            ids += head + body + [self.nl]
            counted = 1 if role == "assistant" else 0
            mask += [0] * len(head) + [counted] * len(body) + [0]
        if add_generation_prompt:
            head = [self.im_start, *self.text_ids("assistant"), self.nl]
            ids += head
            mask += [0] * len(head)
        return ids, mask

    def kinds(self, ids: list[int]) -> list[str]:
        """What each position holds, for drawing a row: "image", "audio", "special" or "text"."""
        special = {self.im_start, self.im_end, *self.span[IMAGE], *self.span[AUDIO]}
        return [IMAGE if i == self.image_id else AUDIO if i == self.audio_id else
                "special" if i in special else "text" for i in ids]


def splice(embeds: torch.Tensor, ids: torch.Tensor, placeholder: int, feats: torch.Tensor,
           what: str) -> torch.Tensor:
    """Put feature frames into the placeholder positions, in one step.

    embeds (B, T, d_model) token embeddings; ids (B, T); feats (N, d_model): every frame of every
    example of the batch, in batch order, then time order. The placeholders of a batch, read row
    by row, must be exactly N. A mismatch means the ids and the features were built from
    different inputs, and is an error that says both counts (never a silent shift)."""
    where = ids == placeholder  # (B, T)
    n = int(where.sum())
    if n != feats.shape[0]:
        raise ValueError(f"splice: the ids hold {n} {what} placeholder tokens but {feats.shape[0]} {what} "
                         "feature frames were given; expand each placeholder to its input's frame count")
    # masked_scatter fills the True positions of the (B, T, d_model) mask in row-major order,
    # that is frame after frame, each frame's d_model values together.
    return embeds.masked_scatter(where.unsqueeze(-1), feats.to(embeds.dtype))


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of (ids, loss mask) -> x (B, T), targets y (B, T) (y[:, t] is the token after t) and
    the loss mask of the targets (B, T); padding on the right, never counted."""
    T = max(len(ids) for ids, _ in rows) - 1
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), pad_id, dtype=torch.long)
    m = torch.zeros(len(rows), T, dtype=torch.long)
    for b, (ids, mask) in enumerate(rows):
        n = len(ids) - 1
        x[b, :n] = torch.tensor(ids[:-1])
        y[b, :n] = torch.tensor(ids[1:])
        m[b, :n] = torch.tensor(mask[1:])
    return x, y, m


def length_groups(ends: torch.Tensor, min_saving: float = 0.1) -> list[torch.Tensor]:
    """A padded batch's rows in groups of similar length, so that each group runs trimmed to its own
    longest row and the padding that collate added is mostly never computed (the idea of length
    bucketing, applied inside one batch: the rows and the loss stay the same). ends (B,): how many
    positions of each row matter. Rows sorted longest first are cut in two where that drops the
    most positions, as long as it drops at least min_saving of the whole batch's (B x longest);
    then each part likewise. Returns the groups' row indices, each group longest first."""
    least = min_saving * len(ends) * int(ends.max())

    def cut(rows: torch.Tensor) -> list[torch.Tensor]:
        n = ends[rows]
        saved = (len(rows) - torch.arange(len(rows))) * (n[0] - n)  # cut before row i: rows i.. end at n[i]
        i = int(saved.argmax())
        return [rows] if saved[i] < least or saved[i] == 0 else cut(rows[:i]) + cut(rows[i:])

    return cut(ends.argsort(descending=True, stable=True))

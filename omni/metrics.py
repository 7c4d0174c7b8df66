"""Edit-distance metrics for transcripts: character and word error rates.

The Levenshtein distance between a reference and a hypothesis is the fewest substitutions,
deletions and insertions that turn one into the other (dynamic programming, one row at a time).
CER is the total character edit distance divided by the total number of reference characters,
WER the same over words; both are summed over the whole set before dividing (the usual corpus
definition), so long utterances weigh more than short ones. They can exceed 1 when the
hypothesis is much longer than the reference.
"""
from __future__ import annotations

from collections.abc import Sequence


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance between two sequences (strings, lists of words, lists of ids)."""
    prev = list(range(len(hyp) + 1))  # distance from ref[:0] to hyp[:j]
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1,  # delete r
                         cur[j - 1] + 1,  # insert h
                         prev[j - 1] + (r != h))  # substitute (free when equal)
        prev = cur
    return prev[-1]


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate over a set of (reference, hypothesis) transcripts."""
    errors = sum(edit_distance(r, h) for r, h in zip(refs, hyps, strict=True))
    return errors / max(1, sum(len(r) for r in refs))


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate: the same over whitespace-separated words."""
    errors = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps, strict=True))
    return errors / max(1, sum(len(r.split()) for r in refs))

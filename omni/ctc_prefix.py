"""CTC prefix scores: how likely a clip's frames are to spell a text that *begins* with a given prefix.

A CTC head gives, for every frame t, log-probabilities logp[t, v] over labels plus a blank. The
probability that the frames spell exactly y is the sum over every frame-by-frame path that
collapses to y (merge repeats, drop blanks); `F.ctc_loss` computes it. Decoding a transcript
left to right needs something else: the probability of every transcript that starts with the
prefix h written so far, whatever follows (Watanabe et al. 2017, "Hybrid CTC/attention
architecture for end-to-end speech recognition", section III-B; ESPnet's CTCPrefixScore). It is
computed from two forward variables of the prefix g one label shorter, over the frames:

    r_n[t]: log P(frames 0 .. t-1 spell g, and frame t-1 is g's last label, not a blank)
    r_b[t]: log P(frames 0 .. t-1 spell g, and frame t-1 is a blank)

(index 0 is "before any frame": the empty prefix has r_b[0] = 0 = log 1, every other prefix -inf).
For h = g + c, with phi[t] = log(e^r_n[t] + e^r_b[t]), or r_b[t] alone when c repeats g's last
label (two equal labels need a blank between them):

    r_n'[t+1] = log(e^r_n'[t] + e^phi[t]) + logp[t, c]     stay on c, or arrive at c from g
    r_b'[t+1] = log(e^r_b'[t] + e^r_n'[t]) + logp[t, blank]
    psi(h)    = log sum_t e^(phi[t] + logp[t, c])            c first emitted at frame t, anything after

and the probability that the frames spell exactly g, all of it, is log(e^r_n[T] + e^r_b[T]).
Both recursions are linear in probability space, so each is a cumulative log-sum-exp: no loop
over frames in Python, and every candidate label of every hypothesis is scored in one call.
"""
from __future__ import annotations

import torch

NEG = -1e30  # log 0 that stays finite, so that -inf - -inf never makes a NaN


def ctc_prefix_start(logp: torch.Tensor, blank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The empty prefix: (r_n, r_b), each (T + 1, 1), for logp (T, V) log-probabilities per frame."""
    T = logp.size(0)
    r_b = torch.cat([logp.new_zeros(1), logp[:, blank].cumsum(0)])[:, None]  # every frame so far blank
    return logp.new_full((T + 1, 1), NEG), r_b


def _cumulative(start: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """x[0] = NEG, x[t+1] = log(e^x[t] + e^start[t]) + steps[t], all (T, M) -> x (T + 1, M).
    Unrolled: x[t+1] = C[t+1] + logcumsumexp_s (start[s] - C[s]) with C the cumulative sum of steps."""
    C = torch.cat([steps.new_zeros(1, steps.size(1)), steps.cumsum(0)])  # (T + 1, M)
    return torch.cat([steps.new_full((1, steps.size(1)), NEG), C[1:] + torch.logcumsumexp(start - C[:-1], 0)])


def ctc_prefix_extend(logp: torch.Tensor, blank: int, r_n: torch.Tensor, r_b: torch.Tensor, last: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score M one-label extensions at once. r_n, r_b (T + 1, M): the state of each extension's prefix g
    (columns may repeat: several labels after one g); last (M,): g's last label (-1 for the empty
    prefix); labels (M,): the label c each appends. Returns psi (M,), the log prefix score of g + c,
    and the state (r_n', r_b') of g + c. Use float64: the cumulative sums reach thousands of nats."""
    phi = torch.where((labels == last)[None, :], r_b, torch.logaddexp(r_n, r_b))  # (T + 1, M)
    lp = logp[:, labels]  # (T, M)
    new_n = _cumulative(phi[:-1], lp)
    new_b = _cumulative(new_n[:-1], logp[:, blank, None].expand_as(lp))
    return torch.logsumexp(phi[:-1] + lp, 0), new_n, new_b


def ctc_prefix_extend_strings(logp: torch.Tensor, blank: int, r_n: torch.Tensor, r_b: torch.Tensor,
                              last: torch.Tensor, strings: list[list[int]], parent: torch.Tensor | None = None):
    """As ctc_prefix_extend, but extension m appends a whole string of labels, strings[m] (non-empty): a
    Thinker token spelled in characters. r_n, r_b (T + 1, H), last (H,): the states of H prefixes;
    parent (M,): the prefix extension m grows (default: prefix m, H = M). One label position at a time;
    extensions of one prefix that share their first labels (" s", " sh", " she") share the work, each
    distinct (prefix, labels so far) is scored once. Returns psi (M,) of each prefix + string, the
    state (T + 1, M) of each, and each one's new last label (M,)."""
    M = len(strings)
    col = list(range(M)) if parent is None else parent.tolist()  # each extension's node so far
    psi = torch.full((M,), NEG, dtype=logp.dtype)
    out_n, out_b = r_n.new_empty(r_n.size(0), M), r_b.new_empty(r_b.size(0), M)
    for k in range(max(len(s) for s in strings)):
        going = [m for m in range(M) if len(strings[m]) > k]  # the extensions with a k-th label
        node = {}  # (node so far, k-th label) -> its index among this position's distinct nodes
        for m in going:
            col[m] = node.setdefault((col[m], strings[m][k]), len(node))
        src, label = torch.tensor(list(node)).T
        p, r_n, r_b = ctc_prefix_extend(logp, blank, r_n[:, src], r_b[:, src], last[src], label)
        last = label
        ends = [m for m in going if len(strings[m]) == k + 1]
        at = torch.tensor([col[m] for m in ends], dtype=torch.long)
        psi[ends], out_n[:, ends], out_b[:, ends] = p[at], r_n[:, at], r_b[:, at]
    return psi, out_n, out_b, torch.tensor([s[-1] for s in strings])


def ctc_full_score(r_n: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
    """(M,) log probability that the whole clip spells exactly the prefix (no label after it)."""
    return torch.logaddexp(r_n[-1], r_b[-1])

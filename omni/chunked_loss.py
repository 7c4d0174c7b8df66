"""The output layer and cross-entropy in one, a chunk of tokens at a time: the full logits tensor
(tokens x vocabulary) is never built. The Thinker uses it when ThinkerConfig.loss_chunk > 0.

The idea is that of fused linear cross-entropy kernels (for example Liger Kernel, Hsu et al. 2024,
arXiv:2410.10989), written here in plain PyTorch: chunks small enough to stay in cache, and the
gradient computed in the forward pass, since the loss is the model's last operation.
"""
import torch


class ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of logits = h @ weight.T, one chunk of tokens at a time.

    The plain way builds all N x vocab logits (16 x 128 x 2048 floats = 16 MB at the tiny shape), then
    log_softmax, then a backward pass over all of them again: three trips through memory that do not
    fit in cache. Here each chunk's logits live only inside the loop, and since the loss is the last
    op, its gradient (softmax - one-hot) is known at once: the forward computes the gradients of h and
    weight too and backward only scales them (the idea of fused linear cross-entropy kernels).
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk):  # h (N, d), weight (V, d), targets (N,), -100 = no loss
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_h, grad_w = torch.zeros_like(h), torch.zeros_like(weight)
        loss = torch.zeros((), device=h.device)
        for s in range(0, h.size(0), chunk):
            hc, y = h[s:s + chunk], targets[s:s + chunk]
            keep = (y != -100).float()  # (n,)
            y = y.clamp(min=0)
            logits = (hc @ weight.T).float()  # (n, V)
            picked = logits.gather(1, y[:, None])[:, 0]  # (n,) the target's logit
            top = logits.amax(-1, keepdim=True)  # (n, 1), subtracted so exp cannot overflow
            p = logits.sub_(top).exp_()  # (n, V) unnormalised softmax, in place of the logits
            z = p.sum(-1, keepdim=True)  # (n, 1)
            loss += ((top[:, 0] + z[:, 0].log() - picked) * keep).sum()  # logsumexp - target logit
            if need_grad:
                p.mul_(keep[:, None] / z)  # softmax of the counted rows, 0 elsewhere
                p[torch.arange(len(y)), y] -= keep  # d loss / d logits = softmax - one-hot
                p = p.to(h.dtype)
                grad_h[s:s + chunk] = p @ weight
                grad_w.addmm_(p.T, hc)
        ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None


def chunked_cross_entropy(h, weight, targets, chunk: int):
    """sum over tokens of cross_entropy(h @ weight.T, targets), without the full logits tensor."""
    return ChunkedCrossEntropy.apply(h, weight, targets, chunk)

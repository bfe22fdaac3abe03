"""The study-style, unchunked KD loss: method §3 step by step with plain autograd.

Every (B, L', V) intermediate is materialized, including the uniform smoothing
tensor that method §3.2 tells the real loss never to build. It is the ground
truth the tests check ``distill.loss.kd`` and ``distill.loss.fused`` against, and
the memory baseline of ``benchmarks/loss_memory.py``; nothing trains with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# arm (method §6) -> (uncertainty, smoothing) as the tests and benchmarks run it (lambda = 0.1).
ARMS = {
    "baseline": (False, None),
    "uncertainty": (True, None),
    "calibration": (False, 0.1),
    "both": (True, 0.1),
}


def reference_kd_loss(s, t, y, *, temperature, alpha, uncertainty, smoothing, weight_norm):
    """method §3 on unshifted (B, L, V) logits ``s``, ``t`` and (B, L) labels ``y``; 0-dim loss."""
    tau = temperature
    s, t, y = s[:, :-1], t[:, :-1], y[:, 1:]  # position i predicts token i + 1
    m = (y != -100).to(s.dtype)  # (B, L')
    vocab = s.shape[-1]
    p = torch.softmax(t / tau, dim=-1)  # 1.
    if smoothing is not None:  # 2.
        eps = smoothing * (1 - p.max(dim=-1, keepdim=True).values)
        p = (1 - eps) * p + eps * torch.full_like(p, 1.0 / vocab)
    kl = (p * (torch.log(p) - torch.log_softmax(s / tau, dim=-1))).sum(-1)  # 3.
    w = torch.ones_like(kl)
    if uncertainty:  # 4.
        p1 = torch.softmax(t, dim=-1)
        entropy = -(p1 * torch.log(p1)).sum(-1)
        for b in range(s.shape[0]):
            valid = entropy[b][m[b].bool()]
            low, high = valid.min(), valid.max()
            if high - low >= 1e-8:
                w[b] = 0.5 + 0.5 * (entropy[b] - low) / (high - low)
            else:
                w[b] = 0.5
        kl = w * kl
    norm = m.sum() if weight_norm == "mask" else (m * w).sum()  # 5.
    soft = (m * kl).sum() / norm
    ce = F.cross_entropy(s.reshape(-1, vocab), y.reshape(-1), reduction="none")  # 6.
    hard = (m.reshape(-1) * ce).sum() / m.sum()
    return alpha * hard + (1 - alpha) * tau**2 * soft  # 7.

"""AdamW and the linear warmup + linear decay schedule (method §4), shared by every training loop."""

from __future__ import annotations

import torch


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW (eps 1e-8); no weight decay on biases and LayerNorm weights (1-D parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def warmup_linear_decay(warmup_steps: int, total_steps: int):
    """LR multiplier: 0 -> 1 linearly over `warmup_steps`, then 1 -> 0 linearly at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay(warmup_steps, total_steps))

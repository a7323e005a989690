"""Parameter groups from parameter-level optimiser hints.

A parameter may carry ``_optim = {"lr": ..., "weight_decay": ...}`` (the S4 convention): SSM
parameters use it to get their own learning rate and no weight decay. Norm weights and biases
(any parameter with fewer than two dimensions) never get weight decay.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["param_groups"]


def param_groups(
    named_modules: Iterable[tuple[nn.Module, float]], weight_decay: float
) -> list[dict]:
    """Split parameters into optimiser groups keyed by (learning rate, weight decay).

    Args:
        named_modules: ``(module, learning_rate)`` pairs, e.g. the head at the full rate and the
            backbone at a lower one. A parameter reached twice is placed once, by its first module.
        weight_decay: Decay for matrices and convolution kernels.

    Returns:
        Groups for ``torch.optim`` constructors, each with ``params``, ``lr``, ``weight_decay``.
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module, lr in named_modules:
        for param in module.parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            hints = getattr(param, "_optim", {})
            decay = 0.0 if param.ndim <= 1 else weight_decay
            key = (hints.get("lr", lr), hints.get("weight_decay", decay))
            groups.setdefault(key, []).append(param)
    return [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]

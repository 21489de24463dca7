"""LARS (You, Gitman, Ginsburg 2017, "Large Batch Training of Convolutional
Networks"): layer-wise adaptive rate scaling.  Each parameter group (a layer)
steps by the global learning rate times its trust ratio ``||p|| / ||g||``, then
momentum (the paper's Algorithm 1, its trust coefficient folded into ``lr``).

A layer-wise optimizer takes the task's parameter groups as a keyword-only
``groups`` and says ``uses_groups=True``; the registry fills them in per task.
"""
from __future__ import annotations

from typing import Mapping

import torch

from l2obench.api import Optimizer, add_decayed_weights, chain, scale, stateless, trace


def _unit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(||x||, x / ||x||)`` over the last dimension, scaled by the largest entry first
    so that neither overflows nor underflows (gradients range from subnormal to 1e34)."""
    top = x.abs().amax(-1, keepdim=True)
    scaled = x / torch.where(top > 0, top, 1)
    norm = torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)
    return top * norm, scaled / torch.where(norm > 0, norm, 1)


def scale_by_trust_ratio(groups: Mapping[str, slice]) -> Optimizer:
    """Per group, ``g * ||p|| / ||g||`` (``g`` alone where either norm is zero);
    the coordinates in no group form one group more."""

    def fn(grads, params):
        label = torch.zeros(grads.shape[-1], dtype=torch.long, device=grads.device)
        for k, sl in enumerate(groups.values(), 1):
            label[sl] = k
        out = grads
        for k in label.unique():
            part = label == k
            g_norm, g_unit = _unit(grads[..., part])
            p_norm = torch.linalg.vector_norm(params[..., part], dim=-1, keepdim=True)
            trusted = torch.where((g_norm > 0) & (p_norm > 0), p_norm * g_unit, grads[..., part])
            out = out.masked_scatter(part.expand_as(out), trusted)
        return out

    return stateless(fn, coordinatewise=False, uses_groups=True)


def lars(lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0, *,
         groups: Mapping[str, slice]) -> Optimizer:
    """LARS: ``-lr * trace(trust_ratio(g + weight_decay * p))``, per group."""
    return chain(add_decayed_weights(weight_decay), scale_by_trust_ratio(groups), trace(momentum), scale(-lr))

"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"):
the sign of an interpolation between momentum and gradient, with decoupled
weight decay.  Built by chaining small transforms, as l2obench's baselines are."""
from __future__ import annotations

import torch

from l2obench.api import Optimizer, add_decayed_weights, chain, scale


def scale_by_lion(beta1: float = 0.9, beta2: float = 0.99) -> Optimizer:
    """``sign(beta1 * m + (1 - beta1) * g)``, then ``m <- beta2 * m + (1 - beta2) * g``."""

    def init(params):
        return {"m": torch.zeros_like(params)}

    def update(grads, state, params):
        m = state["m"]
        direction = torch.sign(beta1 * m + (1 - beta1) * grads)
        return direction, {"m": beta2 * m + (1 - beta2) * grads}

    return Optimizer(init, update)


def lion(lr: float = 1e-4, beta1: float = 0.9, beta2: float = 0.99, weight_decay: float = 0.0) -> Optimizer:
    """Lion: ``-lr * (sign(beta1 m + (1 - beta1) g) + weight_decay * params)``."""
    return chain(scale_by_lion(beta1, beta2), add_decayed_weights(weight_decay), scale(-lr))

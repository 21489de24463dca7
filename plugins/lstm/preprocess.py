"""Preprocessors: gradients ``(S, D)`` to LSTM input features ``(F, S, D)``.

The raw gradient (the paper's quadratics), the paper's log/sign encoding of
Appendix A, and RNNprop's Adam-normalised inputs (Lv et al. 2017, Sec. 4).
A preprocessor holds no meta-parameters; a stateful one (RNNprop's) keeps
running averages in the optimizer state under the prefix ``pre.``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from l2obench.api import ConfigError, State, step_count


@dataclass(frozen=True)
class Preprocessor:
    """Gradients ``(S, D)`` to LSTM input features ``(features, S, D)``, with optional
    state (``init(grads_like) -> state``, ``apply(grads, state) -> (features, state)``).
    A ``stateful`` preprocessor's features depend on earlier gradients too.  ``log_sign_p``
    is set where the features are :func:`log_sign`'s, which the fused kernel computes from
    the raw gradients itself."""

    features: int
    apply: Callable[[Tensor, State], "tuple[Tensor, State]"]
    init: Callable[[Tensor], State] = lambda params: {}
    stateful: bool = False
    log_sign_p: float | None = None


def identity() -> Preprocessor:
    """The raw gradient as the only feature (the paper's quadratics)."""
    return Preprocessor(1, lambda g, state: (g.unsqueeze(0), state))


def log_sign(p: float = 10.0) -> Preprocessor:
    """Appendix A: ``(log|g| / p, sign g)`` if ``|g| >= e^-p``, else ``(-1, e^p g)``."""
    threshold, scale = math.exp(-p), math.exp(p)

    def apply(g: Tensor, state: State):
        magnitude = g.abs()
        big = magnitude >= threshold
        log_part = torch.where(big, magnitude.clamp_min(1e-30).log() / p, -1.0)
        sign_part = torch.where(big, g.sign(), g * scale)
        return torch.stack([log_part, sign_part]), state

    return Preprocessor(2, apply, log_sign_p=p)


def adam_normalised(beta1: float = 0.95, beta2: float = 0.95, eps: float = 1e-8) -> Preprocessor:
    """RNNprop's inputs (Lv et al. 2017, Sec. 4): ``g / sqrt(v_hat)`` and ``m_hat / sqrt(v_hat)``
    with Adam's bias-corrected running averages ``m``, ``v`` (``+ eps`` on the root)."""

    def init(params: Tensor) -> State:
        return {"m": torch.zeros_like(params), "v": torch.zeros_like(params), "count": step_count(params)}

    def apply(g: Tensor, state: State):
        count = state["count"] + 1
        m = beta1 * state["m"] + (1 - beta1) * g
        v = beta2 * state["v"] + (1 - beta2) * g * g
        c = count.unsqueeze(-1)
        root = (v / (1 - beta2**c)).sqrt() + eps
        features = torch.stack([g / root, m / (1 - beta1**c) / root])
        return features, {"m": m, "v": v, "count": count}

    return Preprocessor(2, apply, init, stateful=True)


def paper_preprocessor(preprocess: bool = True, p: float = 10.0) -> Preprocessor:
    """The paper's choice (Sec. 3): :func:`log_sign` with ``p`` (Appendix A), or the raw
    gradient with ``preprocess=False`` (Sec. 3.1, quadratics)."""
    if preprocess and p <= 0:
        raise ConfigError(f"p={p} must be positive (Appendix A preprocessing)")
    return log_sign(p) if preprocess else identity()

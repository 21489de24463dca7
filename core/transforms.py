"""Small gradient transforms that hand-designed optimizers are chained from (after
optax). Each follows the arithmetic of the torch.optim optimizer it mirrors, so
the built-in baselines match torch.optim step for step."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .optimizer import Optimizer, State, stateless, step_count


def add_decayed_weights(weight_decay: float) -> Optimizer:
    """``g + weight_decay * params`` (L2 regularisation, torch's ``weight_decay``)."""
    if weight_decay == 0:
        return stateless(lambda g, p: g)
    return stateless(lambda g, p: g.add(p, alpha=weight_decay), zero_grad="any")


def trace(momentum: float, dampening: float = 0.0, nesterov: bool = False) -> Optimizer:
    """Heavy-ball momentum as torch.optim.SGD computes it (first step: buffer = g)."""

    def init(params: Tensor) -> State:
        return {"buf": torch.zeros_like(params), "count": step_count(params)}

    def update(g: Tensor, state: State, params: Tensor):
        first = (state["count"] == 0).unsqueeze(-1)
        buf = torch.where(first, g, state["buf"].mul(momentum).add(g, alpha=1 - dampening))
        out = g.add(buf, alpha=momentum) if nesterov else buf
        return out, {"buf": buf, "count": state["count"] + 1}

    return Optimizer(init, update)


def scale_by_rms(alpha: float = 0.99, eps: float = 1e-8, centered: bool = False) -> Optimizer:
    """``g / (sqrt(E[g^2] - E[g]^2 if centered) + eps)`` as torch.optim.RMSprop."""

    def init(params: Tensor) -> State:
        state = {"square_avg": torch.zeros_like(params)}
        if centered:
            state["grad_avg"] = torch.zeros_like(params)
        return state

    def update(g: Tensor, state: State, params: Tensor):
        sq = state["square_avg"].mul(alpha).addcmul(g, g, value=1 - alpha)
        new = {"square_avg": sq}
        if centered:
            ga = state["grad_avg"].lerp(g, 1 - alpha)
            new["grad_avg"] = ga
            avg = sq.addcmul(ga, ga, value=-1).sqrt().add(eps)
        else:
            avg = sq.sqrt().add(eps)
        return g / avg, new

    return Optimizer(init, update)


def scale_by_adam(beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    """Bias-corrected ``m / (sqrt(v) + eps)`` with torch.optim.Adam's arithmetic."""

    def init(params: Tensor) -> State:
        return {"exp_avg": torch.zeros_like(params), "exp_avg_sq": torch.zeros_like(params),
                "count": step_count(params)}

    def update(g: Tensor, state: State, params: Tensor):
        count = state["count"] + 1
        m = state["exp_avg"].lerp(g, 1 - beta1)
        v = state["exp_avg_sq"].mul(beta2).addcmul(g, g, value=1 - beta2)
        c = count.unsqueeze(-1)
        out = (m / _one_minus_power(beta1, c)) / (v.sqrt() / _one_minus_power(beta2, c).sqrt()).add(eps)
        return out, {"exp_avg": m, "exp_avg_sq": v, "count": count}

    return Optimizer(init, update)


def _one_minus_power(beta: float, count: Tensor) -> Tensor:
    """``1 - beta**count`` without the cancellation of float32 ``1 - 0.999**t`` (Adam's bias correction)."""
    log_beta = math.log(beta) if beta > 0 else -math.inf
    return -torch.expm1(count * log_beta)


def scale_by_adagrad(lr_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                     eps: float = 1e-10) -> Optimizer:
    """``g / (sqrt(sum g^2) + eps)`` with torch.optim.Adagrad's learning-rate decay folded in."""

    def init(params: Tensor) -> State:
        return {"sum": torch.full_like(params, initial_accumulator_value), "count": step_count(params)}

    def update(g: Tensor, state: State, params: Tensor):
        count = state["count"] + 1
        acc = state["sum"].addcmul(g, g)
        decay = 1 / (1 + (count - 1) * lr_decay)
        return decay.unsqueeze(-1) * g / acc.sqrt().add(eps), {"sum": acc, "count": count}

    return Optimizer(init, update)


def decoupled_weight_decay(lr: float, weight_decay: float) -> Optimizer:
    """AdamW's ``-lr * weight_decay * params``, added to the step already computed."""
    if weight_decay == 0:
        return stateless(lambda g, p: g)
    return stateless(lambda g, p: g - lr * weight_decay * p, zero_grad="any")

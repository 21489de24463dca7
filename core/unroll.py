"""One truncated unroll of a learned optimizer on an optimizee (Eq. 3 of the paper):
K steps whose weighted losses are the meta-loss, through the steps' graph or, for an
optimizer with ``replay``, without a graph and backpropagated through ``replay`` once."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from .evaluate import check_updates, loss_and_grad
from .optimizer import Optimizer, State, steps_to_replay
from .task import Task


@dataclass
class Unroll:
    """What one truncated unroll produced: the differentiable meta-loss (``None``
    when every weight is zero), the logged weighted loss, and where it ended."""

    meta_loss: Tensor | None
    logged: Tensor
    params: Tensor
    state: State


def unroll(
    opt: Optimizer,
    task: Task,
    params: Tensor,
    state: State,
    stream: Iterator[Any],
    weights: Sequence[float],
    *,
    second_order: bool = False,
) -> Unroll:
    """Run ``len(weights)`` optimizer steps and build the meta-loss of Eq. 3.

    The meta-loss is a mean over the optimizees (rows of ``params``) of
    ``sum_t w_t f(theta_t)``; with dropped second derivatives it is the surrogate
    ``sum_t w_t <grad_t, theta_t>`` whose meta-gradient equals that of the real
    losses.  ``logged`` always holds the real weighted losses (detached).  For an
    optimizer with ``replay`` (and dropped second derivatives) the steps run
    without a graph and the meta-loss reaches the meta-parameters through
    ``replay``: the same meta-gradient, and the returned ``params`` have no graph.
    """
    rows = params.shape[0]
    need_graph = any(weights) and torch.is_grad_enabled()
    if need_graph and not second_order and opt.replay is not None:
        return _replayed_unroll(opt, task, params, state, stream, weights)
    meta: Tensor | None = None
    logged = torch.zeros((), dtype=params.dtype, device=params.device)
    for t, w in enumerate(weights):
        batch = next(stream)
        if second_order and need_graph:
            p = params if params.requires_grad else params.detach().requires_grad_(True)
            loss = task.loss(p, batch)
            (grad,) = torch.autograd.grad(loss.sum(), p, create_graph=True)
            if w:
                term = loss.sum() * (w / rows)
                meta = term if meta is None else meta + term
            params = p
        else:
            loss, grad = loss_and_grad(task, params, batch)
            if w and need_graph and params.requires_grad:
                term = (grad * params).sum() * (w / rows)
                meta = term if meta is None else meta + term
        if w:
            logged = logged + loss.detach().sum() * (w / rows)
        updates, state = opt.update(grad, state, params)
        check_updates(updates, params, opt, t)
        params = params + updates
    if need_graph and meta is None:
        # Every weighted step sat at the unroll's (constant) start: zero meta-gradient.
        meta = torch.zeros((), dtype=params.dtype, device=params.device, requires_grad=True)
    return Unroll(meta, logged, params, state)


def _replayed_unroll(opt: Optimizer, task: Task, params: Tensor, state: State, stream: Iterator[Any],
                     weights: Sequence[float]) -> Unroll:
    """:func:`unroll` for an optimizer with ``replay``: the steps run without a graph,
    then ``U = replay(grads, state, updates)`` carries the meta-parameters' graph and
    the surrogate becomes ``sum_t w_t <grad_t, theta_0 + sum_{s<t} U_s>``, that is
    ``sum_s <A_s, U_s>`` plus a constant, with ``A_s = sum_{t>s} w_t grad_t``."""
    rows = params.shape[0]
    start, start_state = params.detach(), state
    grads, updates = [], []
    logged = torch.zeros((), dtype=params.dtype, device=params.device)
    params = start
    with torch.no_grad(), steps_to_replay():
        for w in weights:
            loss, grad = loss_and_grad(task, params, next(stream))
            if w:
                logged = logged + loss.sum() * (w / rows)
            step, state = opt.update(grad, state, params)
            check_updates(step, params, opt, len(grads))
            grads.append(grad)
            updates.append(step)
            params = params + step
    weighted = torch.stack([g * (w / rows) for g, w in zip(grads, weights)])
    weighted[0] = 0  # f(theta_0) does not depend on the meta-parameters
    if not weighted.any():
        meta = torch.zeros((), dtype=params.dtype, device=params.device, requires_grad=True)
        return Unroll(meta, logged, params, state)
    after = weighted.flip(0).cumsum(0).flip(0)  # after[s] = sum_{t >= s} w_t grad_t
    after = torch.cat([after[1:], torch.zeros_like(after[:1])])
    replayed = opt.replay(torch.stack(grads), start_state, torch.stack(updates))
    meta = (after * replayed).sum() + (weighted.sum(0) * start).sum()
    return Unroll(meta, logged, params, state)

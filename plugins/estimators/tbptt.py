"""Truncated backpropagation through time (Andrychowicz et al. 2016, Sec. 2, Eq. 3): the
paper's estimator and the default.

The horizon runs in unrolls of ``truncation`` steps (default: the config's ``unroll``);
after each, the meta-loss ``sum_t w_t f(theta_t)`` is backpropagated into the
meta-parameters through that unroll only, and theta and the optimizer state are
detached before the next.  Gradients flowing across unrolls are dropped, hence its bias
over long horizons."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from l2obench.api import Estimate, MetaProblem, PositiveInt, truncated_unroll


@dataclass(frozen=True)
class TruncatedBPTT:
    truncation: int | None = None
    differentiable: bool = True

    def episode(self, problem: MetaProblem) -> Iterator[Estimate]:
        task, seeds, device = problem.task, problem.seeds, problem.device
        opt = problem.lopt.opt_fn(task.groups)
        params = task.init(seeds, device=device)
        state = opt.init(params)
        stream = task.batches("train", seeds, device=device)
        meta_params = problem.meta_params
        for start, stop in problem.spans(self.truncation):
            w = problem.weights[start:stop]
            with torch.set_grad_enabled(any(w)):
                out = truncated_unroll(opt, task, params, state, stream, w, second_order=problem.second_order)
            steps = (stop - start) * len(seeds)
            logged = out.logged
            finite = bool(torch.isfinite(out.logged))
            grads = None
            if out.meta_loss is not None:
                finite = finite and bool(torch.isfinite(out.meta_loss))
                if finite:
                    grads = list(torch.autograd.grad(out.meta_loss, meta_params, allow_unused=True))
            yield Estimate(grads, logged, steps, finite)
            if not finite:
                return
            params = out.params.detach()
            state = {k: v.detach() for k, v in out.state.items()}


def tbptt(truncation: PositiveInt | None = None) -> TruncatedBPTT:
    """Truncated backpropagation through time (the paper's Eq. 3): meta-gradients through each unroll."""
    return TruncatedBPTT(truncation)

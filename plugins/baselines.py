"""Hand-designed baselines, each matching its torch.optim counterpart step for step.

Each factory's annotations declare what its hyperparameters may be (a learning rate
finite and positive, a moving-average decay in [0, 1), ...), checked before it runs."""
from __future__ import annotations

from l2obench.api import (Beta, LearningRate, NonNegative, Optimizer, add_decayed_weights, chain,
                          decoupled_weight_decay, hookimpl, scale, scale_by_adagrad, scale_by_adam, scale_by_rms,
                          trace)


def sgd(lr: LearningRate = 0.01, weight_decay: NonNegative = 0.0) -> Optimizer:
    """Plain gradient descent (torch.optim.SGD)."""
    return chain(add_decayed_weights(weight_decay), scale(-lr))


def momentum(lr: LearningRate = 0.01, momentum: Beta = 0.9, dampening: NonNegative = 0.0,
             weight_decay: NonNegative = 0.0) -> Optimizer:
    """Heavy-ball momentum (torch.optim.SGD with momentum)."""
    return chain(add_decayed_weights(weight_decay), trace(momentum, dampening), scale(-lr))


def nag(lr: LearningRate = 0.01, momentum: Beta = 0.9, weight_decay: NonNegative = 0.0) -> Optimizer:
    """Nesterov accelerated gradient (torch.optim.SGD with nesterov=True)."""
    return chain(add_decayed_weights(weight_decay), trace(momentum, nesterov=True), scale(-lr))


def rmsprop(lr: LearningRate = 0.01, alpha: Beta = 0.99, eps: NonNegative = 1e-8, centered: bool = False,
            momentum: Beta = 0.0, weight_decay: NonNegative = 0.0) -> Optimizer:
    """RMSprop (torch.optim.RMSprop)."""
    parts = [add_decayed_weights(weight_decay), scale_by_rms(alpha, eps, centered)]
    if momentum:
        parts.append(_rms_momentum(momentum))
    return chain(*parts, scale(-lr))


def _rms_momentum(mu: float) -> Optimizer:
    # torch.optim.RMSprop's buffer starts at zero (unlike SGD's, which starts at g).
    import torch

    return Optimizer(lambda p: {"buf": torch.zeros_like(p)},
                     lambda g, s, p: ((b := mu * s["buf"] + g), {"buf": b}))


def adam(lr: LearningRate = 0.001, beta1: Beta = 0.9, beta2: Beta = 0.999, eps: NonNegative = 1e-8,
         weight_decay: NonNegative = 0.0) -> Optimizer:
    """Adam (torch.optim.Adam)."""
    return chain(add_decayed_weights(weight_decay), scale_by_adam(beta1, beta2, eps), scale(-lr))


def adamw(lr: LearningRate = 0.001, beta1: Beta = 0.9, beta2: Beta = 0.999, eps: NonNegative = 1e-8,
          weight_decay: NonNegative = 0.01) -> Optimizer:
    """Adam with decoupled weight decay (torch.optim.AdamW)."""
    return chain(scale_by_adam(beta1, beta2, eps), scale(-lr), decoupled_weight_decay(lr, weight_decay))


def adagrad(lr: LearningRate = 0.01, lr_decay: NonNegative = 0.0, weight_decay: NonNegative = 0.0,
            initial_accumulator_value: NonNegative = 0.0, eps: NonNegative = 1e-10) -> Optimizer:
    """Adagrad (torch.optim.Adagrad)."""
    return chain(add_decayed_weights(weight_decay),
                 scale_by_adagrad(lr_decay, initial_accumulator_value, eps), scale(-lr))


@hookimpl
def register_optimizers(register):
    for factory in (sgd, momentum, nag, rmsprop, adam, adamw, adagrad):
        register(factory.__name__, factory)

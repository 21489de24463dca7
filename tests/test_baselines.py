"""Every built-in baseline against its torch.optim counterpart, step for step."""
from __future__ import annotations

import pytest
import torch

from l2obench import get_registry

STEPS = 100

#: (id, baseline name, its hyperparameters, torch.optim class, its keyword arguments)
CASES = [
    ("sgd", "sgd", {"lr": 0.05}, torch.optim.SGD, {"lr": 0.05}),
    ("sgd-wd", "sgd", {"lr": 0.05, "weight_decay": 0.1}, torch.optim.SGD, {"lr": 0.05, "weight_decay": 0.1}),
    ("momentum", "momentum", {"lr": 0.02, "momentum": 0.9}, torch.optim.SGD, {"lr": 0.02, "momentum": 0.9}),
    ("momentum-dampening-wd", "momentum", {"lr": 0.02, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.05},
     torch.optim.SGD, {"lr": 0.02, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.05}),
    ("nag", "nag", {"lr": 0.02, "momentum": 0.9}, torch.optim.SGD, {"lr": 0.02, "momentum": 0.9, "nesterov": True}),
    ("nag-wd", "nag", {"lr": 0.02, "momentum": 0.7, "weight_decay": 0.1},
     torch.optim.SGD, {"lr": 0.02, "momentum": 0.7, "nesterov": True, "weight_decay": 0.1}),
    ("rmsprop", "rmsprop", {"lr": 0.01}, torch.optim.RMSprop, {"lr": 0.01}),
    ("rmsprop-alpha", "rmsprop", {"lr": 0.01, "alpha": 0.9}, torch.optim.RMSprop, {"lr": 0.01, "alpha": 0.9}),
    ("rmsprop-centered", "rmsprop", {"lr": 0.01, "alpha": 0.9, "centered": True},
     torch.optim.RMSprop, {"lr": 0.01, "alpha": 0.9, "centered": True}),
    ("rmsprop-momentum", "rmsprop", {"lr": 0.005, "momentum": 0.9}, torch.optim.RMSprop,
     {"lr": 0.005, "momentum": 0.9}),
    ("rmsprop-centered-momentum-wd", "rmsprop",
     {"lr": 0.005, "centered": True, "momentum": 0.5, "weight_decay": 0.1, "eps": 1e-6},
     torch.optim.RMSprop, {"lr": 0.005, "centered": True, "momentum": 0.5, "weight_decay": 0.1, "eps": 1e-6}),
    ("adam", "adam", {"lr": 0.01}, torch.optim.Adam, {"lr": 0.01}),
    ("adam-betas-wd", "adam", {"lr": 0.03, "beta1": 0.5, "beta2": 0.9, "eps": 1e-6, "weight_decay": 0.1},
     torch.optim.Adam, {"lr": 0.03, "betas": (0.5, 0.9), "eps": 1e-6, "weight_decay": 0.1}),
    ("adamw", "adamw", {"lr": 0.01}, torch.optim.AdamW, {"lr": 0.01}),
    ("adamw-wd", "adamw", {"lr": 0.01, "beta1": 0.8, "weight_decay": 0.5},
     torch.optim.AdamW, {"lr": 0.01, "betas": (0.8, 0.999), "weight_decay": 0.5}),
    ("adagrad", "adagrad", {"lr": 0.1}, torch.optim.Adagrad, {"lr": 0.1}),
    ("adagrad-decay-wd", "adagrad",
     {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.1, "initial_accumulator_value": 0.5, "eps": 1e-8},
     torch.optim.Adagrad, {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.1, "initial_accumulator_value": 0.5,
                           "eps": 1e-8}),
]


pytestmark = pytest.mark.usefixtures("single_thread")


def random_quadratic(seed: int, S: int, D: int, dtype):
    """Per-row quadratics ``0.5 ||A_s x_s - b_s||^2`` and a starting point, shapes ``(S, D)``."""
    g = torch.Generator().manual_seed(seed)
    A = (torch.randn(S, D, D, generator=g) / D**0.5).to(dtype)
    b = torch.randn(S, D, generator=g).to(dtype)
    x0 = torch.randn(S, D, generator=g).to(dtype)

    def grad(x):
        r = torch.einsum("sij,sj->si", A, x) - b
        return torch.einsum("sij,si->sj", A, r)

    return grad, x0


def test_every_builtin_baseline_is_compared():
    builtin = {e.name for e in get_registry().entries["optimizer"].values() if e.distribution == "l2obench"}
    assert builtin - {name for _, name, *_ in CASES} == set()


@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-12, 1e-14), (torch.float32, 1e-5, 1e-6)],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("seed,S,D", [(0, 1, 5), (1, 4, 7), (2, 3, 20)])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_baseline_matches_torch_optim(case, seed, S, D, dtype, rtol, atol):
    """Both optimizers step from the same parameters with the same gradient, 100
    times; the new parameters must agree after every step.

    torch.optim's parameter is reset to ours before each step: a one-ulp rounding
    difference would otherwise grow without bound wherever a gradient crosses
    zero (Adam's and RMSprop's updates are nearly its sign there), while a wrong
    formula shows at once.
    """
    _, name, hyperparameters, torch_cls, torch_kwargs = case
    grad, x0 = random_quadratic(seed, S, D, dtype)
    opt = get_registry().optimizer(name, **hyperparameters)

    ref = x0.clone().requires_grad_(True)
    torch_opt = torch_cls([ref], **torch_kwargs)
    params, state = x0.clone(), opt.init(x0)
    ours, theirs = [], []
    for _ in range(STEPS):
        g = grad(params)
        with torch.no_grad():
            ref.copy_(params)
        ref.grad = g.clone()
        torch_opt.step()
        updates, state = opt.update(g, state, params)
        params = params + updates
        ours.append(params)
        theirs.append(ref.detach().clone())
    ours, theirs = torch.stack(ours), torch.stack(theirs)
    close = torch.isclose(ours, theirs, rtol=rtol, atol=atol).flatten(1).all(1)
    if not close.all():
        step = int((~close).nonzero()[0])
        torch.testing.assert_close(ours[step], theirs[step], rtol=rtol, atol=atol,
                                   msg=lambda m: f"{name} differs from {torch_cls.__name__} at step {step}: {m}")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_baseline_passes_check_matches_reference(case):
    """The kit's own reference check: drawn params and gradient sequences, float32 and
    float64, step for step against the torch.optim class."""
    from l2obench.testing import check_matches_reference

    _, name, hyperparameters, torch_cls, torch_kwargs = case
    check_matches_reference(get_registry().optimizer(name, **hyperparameters), torch_cls, torch_kwargs)

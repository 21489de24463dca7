"""Conformance checks for task families: finite at init, the batching contract
(row ``i`` depends on ``seeds[i]`` alone), determinism, held-out metrics where a task
declares them, and one-line config errors."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from ..errors import ConfigError
from ..task import SPLITS, Renderable, TaskFamily, task_metrics
from . import strategies as lst
from .properties import close, fail, identical, kit_check, kit_property

__all__ = ["check_task_finite_at_init", "check_task_batching", "check_task_deterministic", "check_task_heldout",
           "check_task_gradient", "check_config_errors", "check_task_render", "TASK_FAMILY_CHECKS"]


def _seed_lists(min_size: int = 1, max_size: int = 3):
    return st.lists(st.integers(0, 10_000), min_size=min_size, max_size=max_size, unique=True)


def _loss_and_grad(task, params: Tensor, batch) -> tuple[Tensor, Tensor]:
    """Autograd through ``loss``, whether or not the task writes its gradient out."""
    with torch.enable_grad():
        p = params.detach().clone().requires_grad_(True)
        loss = task.loss(p, batch)
        (grad,) = torch.autograd.grad(loss.sum(), p)
    return loss.detach(), grad


@kit_check
def check_task_finite_at_init(family: TaskFamily) -> None:
    """For sampled small configs, ``init(seeds)`` is a finite ``(S, dim)`` floating
    tensor, the groups are slices inside ``dim``, and on the first minibatch of
    every split the loss ``(S,)`` and its gradient are finite."""
    name = "check_task_finite_at_init"

    @kit_property(5)
    @given(lst.task_configs(family), _seed_lists())
    def prop(config, seeds):
        task = family.task(**config)
        params = task.init(seeds)
        if not (isinstance(params, Tensor) and params.is_floating_point()
                and tuple(params.shape) == (len(seeds), task.dim)):
            got = (tuple(params.shape), params.dtype) if isinstance(params, Tensor) else type(params).__name__
            fail(name, f"init() gave {got}, expected a floating tensor of shape {(len(seeds), task.dim)}",
                 config=config, seeds=seeds)
        if not torch.isfinite(params).all():
            fail(name, "init() gave non-finite parameters", config=config, seeds=seeds)
        for group, sl in task.groups.items():
            inside = isinstance(sl, slice) and 0 <= (sl.start or 0) <= (
                task.dim if sl.stop is None else sl.stop) <= task.dim
            if not inside:
                fail(name, f"group {group!r} is {sl!r}, not a slice inside dim={task.dim}", config=config)
        for split in SPLITS:
            loss, grad = _loss_and_grad(task, params, next(iter(task.batches(split, seeds))))
            if tuple(loss.shape) != (len(seeds),):
                fail(name, f"loss on split {split!r} has shape {tuple(loss.shape)}, expected {(len(seeds),)}",
                     config=config, seeds=seeds)
            if not torch.isfinite(loss).all() or not torch.isfinite(grad).all():
                fail(name, f"loss {loss.tolist()} or its gradient is not finite at init on split {split!r}",
                     config=config, seeds=seeds)

    prop()


def _first_losses(task, seeds: Sequence[int], params: Tensor, batches: int = 2) -> dict[str, list[Tensor]]:
    out = {}
    for split in SPLITS:
        stream = iter(task.batches(split, seeds))
        out[split] = [task.loss(params, next(stream)).detach() for _ in range(batches)]
    return out


@kit_check
def check_task_batching(family: TaskFamily) -> None:
    """The batching contract: row ``i`` of ``init(seeds)`` and of the losses on
    the minibatches of every split depends on ``seeds[i]`` alone, so a batched
    call equals one call per seed."""
    name = "check_task_batching"

    @kit_property(4)
    @given(lst.task_configs(family), _seed_lists(2, 3))
    def prop(config, seeds):
        task = family.task(**config)
        params = task.init(seeds)
        losses = _first_losses(task, seeds, params)
        for i, seed in enumerate(seeds):
            alone = task.init([seed])
            if not close(params[i:i + 1], alone):
                fail(name, f"row {i} of init({seeds}) differs from init([{seed}])", config=config, seeds=seeds)
            alone_losses = _first_losses(task, [seed], alone)
            for split, per_batch in losses.items():
                for b, (batched, single) in enumerate(zip(per_batch, alone_losses[split])):
                    if not close(batched[i:i + 1], single):
                        fail(name, f"on split {split!r}, minibatch {b}: row {i} of the batched loss is "
                                   f"{batched[i].item()!r} but seed {seed} alone gives {single[0].item()!r}",
                             config=config, seeds=seeds)

    prop()


@kit_check
def check_task_deterministic(family: TaskFamily) -> None:
    """Building the task twice from one config and calling it with the same
    seeds gives bitwise the same initial parameters and minibatch losses."""
    name = "check_task_deterministic"

    @kit_property(4)
    @given(lst.task_configs(family), _seed_lists())
    def prop(config, seeds):
        runs = []
        for _ in range(2):
            task = family.task(**config)
            params = task.init(seeds)
            runs.append((params, _first_losses(task, seeds, params)))
        (p1, l1), (p2, l2) = runs
        if not identical(p1, p2):
            fail(name, "init() gave different parameters for the same seeds", config=config, seeds=seeds)
        for split in l1:
            for b, (x, y) in enumerate(zip(l1[split], l2[split])):
                if not identical(x, y):
                    fail(name, f"on split {split!r}, minibatch {b}: the same seeds gave losses {x.tolist()} "
                               f"and {y.tolist()}", config=config, seeds=seeds)

    prop()


@kit_check
def check_task_heldout(family: TaskFamily) -> None:
    """Held-out metrics tell the truth: a task with ``evaluate`` declares its ``metrics``
    (and one that declares some has ``evaluate``); on each held-out split ``evaluate(params,
    split)`` returns exactly the declared names, each a finite ``(S,)`` tensor at init, the
    same for the same parameters twice, and row ``i`` equal to a one-seed call's.  A task
    without either passes: it has no held-out data."""
    name = "check_task_heldout"

    @kit_property(3)
    @given(lst.task_configs(family), _seed_lists(2, 3))
    def prop(config, seeds):
        task = family.task(**config)
        try:
            metrics = task_metrics(task)
        except Exception as exc:
            fail(name, str(exc), config=config)
        if not metrics:
            if callable(getattr(task, "evaluate", None)):
                fail(name, "the task has evaluate() but declares no metrics; declare the names it returns in "
                           "`metrics`", config=config)
            return
        params = task.init(seeds)
        for split in ("validation", "test"):
            with torch.no_grad():
                got = task.evaluate(params, split)
                again = task.evaluate(params, split)
            if not isinstance(got, dict) or set(got) != set(metrics):
                fail(name, f"evaluate(params, {split!r}) returned "
                           f"{sorted(got) if isinstance(got, dict) else type(got).__name__}, but the task declares "
                           f"metrics {list(metrics)}", config=config, seeds=seeds)
            for metric in metrics:
                value = got[metric]
                if not isinstance(value, Tensor) or tuple(value.shape) != (len(seeds),):
                    shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    fail(name, f"{metric!r} on split {split!r} is {shape}, expected a tensor of shape "
                               f"{(len(seeds),)}", config=config, seeds=seeds)
                if not torch.isfinite(value).all():
                    fail(name, f"{metric!r} on split {split!r} is not finite at init: {value.tolist()}",
                         config=config, seeds=seeds)
                if not identical(value, again[metric]):
                    fail(name, f"{metric!r} on split {split!r} differs between two calls with the same params",
                         config=config, seeds=seeds)
                for i, seed in enumerate(seeds):
                    with torch.no_grad():
                        alone = task.evaluate(params[i:i + 1], split)[metric]
                    if not close(value[i:i + 1], alone):
                        fail(name, f"{metric!r} on split {split!r}: row {i} of the batched call is "
                                   f"{value[i].item()!r} but seed {seed} alone gives {alone[0].item()!r}",
                             config=config, seeds=seeds)

    prop()


_WRONG_VALUES = ("not-a-number", 3.5, object())


@kit_check
def check_config_errors(family: TaskFamily) -> None:
    """A config mistake is a :class:`~l2obench.ConfigError` with a one-line
    message naming the key: an unknown key, and a value of the wrong type for
    each field."""
    name = "check_config_errors"

    def expect_error(params: dict, key: str, what: str) -> None:
        try:
            family.validate(**params)
        except ConfigError as exc:
            msg = str(exc)
            if "\n" in msg.strip():
                raise AssertionError(f"{name}: the error for {what} spans several lines: {msg!r}") from None
            if key not in msg:
                raise AssertionError(f"{name}: the error for {what} does not name the key {key!r}: {msg!r}") from None
            return
        except Exception as exc:
            raise AssertionError(f"{name}: {what} raised {type(exc).__name__} instead of ConfigError: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        raise AssertionError(f"{name}: {what} was accepted; it must raise ConfigError")

    bogus = "no_such_key_l2obench"
    expect_error({bogus: 1}, bogus, f"the unknown key {bogus!r}")
    for field in family.config.model_fields:
        for wrong in _WRONG_VALUES:
            try:
                family.config(**{field: wrong})
            except Exception:
                expect_error({field: wrong}, field, f"{field}={wrong!r} (wrong type)")
                break


def _is_image(image, ndim: int) -> bool:
    return (isinstance(image, Tensor) and image.is_floating_point() and image.ndim == ndim
            and image.shape[-1] in (1, 3) and bool(torch.isfinite(image).all())
            and bool(((image >= 0) & (image <= 1)).all()))


@kit_check
def check_task_render(family: TaskFamily) -> None:
    """For a :class:`~l2obench.task.Renderable` task (others pass): ``render`` gives one
    finite ``(H, W, C)`` image in [0, 1] per seed, C 1 or 3, row ``i`` from ``params[i]``
    alone; ``references`` are such images by name; ``caption`` is one line of text."""
    name = "check_task_render"

    @kit_property(3)
    @given(lst.task_configs(family), _seed_lists(1, 3))
    def prop(config, seeds):
        task = family.task(**config)
        if not isinstance(task, Renderable):
            return
        params = task.init(seeds)
        images = task.render(params)
        if len(images) != len(seeds) or not _is_image(images, 4):
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            fail(name, f"render() gave {got}; expected {len(seeds)} finite (H, W, 1 or 3) images in [0, 1]",
                 config=config, seeds=seeds)
        for i in range(len(seeds)):
            if not close(task.render(params[i:i + 1]), images[i:i + 1]):
                fail(name, f"render() of row {i} alone differs from row {i} of the batched render()",
                     config=config, seeds=seeds)
        for label, image in task.references().items():
            if not (isinstance(label, str) and _is_image(image, 3)):
                fail(name, f"reference {label!r} is not a finite (H, W, 1 or 3) image in [0, 1]", config=config)
        caption = task.caption()
        if not isinstance(caption, str) or "\n" in caption:
            fail(name, f"caption() gave {caption!r}; expected one line of text", config=config)

    prop()


@kit_check
def check_task_gradient(family: TaskFamily) -> None:
    """A task that writes its gradient out (``loss_and_grad(params, batch)``) gives the losses
    of ``loss`` and autograd's gradient of their sum (their shapes, dtypes and devices, and their
    values up to rounding) on the first two minibatches of every split, at init and at moved
    parameters; without one it passes."""
    name = "check_task_gradient"

    @kit_property(4)
    @given(lst.task_configs(family), _seed_lists(), st.floats(0.0, 2.0))
    def prop(config, seeds, move):
        task = family.task(**config)
        own = getattr(task, "loss_and_grad", None)
        if own is None:
            return
        params = task.init(seeds)
        params = params + move * torch.randn(params.shape, generator=torch.Generator().manual_seed(seeds[0])).to(
            params)
        for split in SPLITS:
            stream = iter(task.batches(split, seeds))
            for b in range(2):
                batch = next(stream)
                want_loss, want_grad = _loss_and_grad(task, params, batch)
                with torch.no_grad():
                    loss, grad = own(params.clone(), batch)
                if not (isinstance(loss, Tensor) and isinstance(grad, Tensor)):
                    fail(name, f"loss_and_grad gave {type(loss).__name__}, {type(grad).__name__}; expected two "
                               "tensors", config=config)
                for what, got, want in (("losses", loss, want_loss), ("gradient", grad, want_grad)):
                    if (got.shape, got.dtype, got.device) != (want.shape, want.dtype, want.device):
                        fail(name, f"loss_and_grad's {what}: {tuple(got.shape)} {got.dtype} on {got.device}; "
                                   f"loss and autograd give {tuple(want.shape)} {want.dtype} on {want.device}",
                             config=config, seeds=seeds)
                if not close(loss, want_loss):
                    fail(name, f"on split {split!r}, minibatch {b}: loss_and_grad's losses {loss.tolist()} differ "
                               f"from loss's {want_loss.tolist()}", config=config, seeds=seeds)
                if not close(grad, want_grad):
                    gap = (grad - want_grad).abs().max().item() if grad.shape == want_grad.shape else "shape"
                    fail(name, f"on split {split!r}, minibatch {b}: loss_and_grad's gradient differs from autograd "
                               f"through loss (largest gap {gap})", config=config, seeds=seeds)

    prop()


TASK_FAMILY_CHECKS: tuple[Callable, ...] = (
    check_task_finite_at_init, check_task_batching, check_task_deterministic, check_task_heldout,
    check_task_gradient, check_config_errors, check_task_render,
)


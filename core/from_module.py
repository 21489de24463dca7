"""A seed-batched :class:`~l2obench.Task` from an ordinary ``torch.nn.Module``.

:func:`module_task` takes a factory that builds the module, a data source and a
loss, and runs the module's forward pass for all seeds at once with
``torch.func``: ``functional_call`` under ``vmap`` over per-seed parameters, so
``(S, dim)`` params are ``S`` independent copies of the module in one batched
call, exactly as a hand-written family's ``(S, dim)`` code is.

The rules, which are the Task contract's applied to a module:

- **Parameters.** Seed ``s`` builds the module with torch's global generator
  seeded from ``seed_generator(s, "init")``, so its initial parameters are the
  module's own initialisation (``nn.Linear``'s, ...), drawn for that seed alone.
  The flat vector holds every parameter of ``named_parameters()``, flattened in
  that order, except that the parameters of one group are made contiguous.
- **Groups.** A parameter's group is the first part of its dotted name
  (``encoder.0.weight`` -> ``encoder``; in an ``nn.Sequential``, the layer index:
  ``0``, ``1``, ...), unless ``group_of`` maps names to groups; groups keep the
  order in which they first appear.
- **Buffers** (batch-norm running statistics, fixed masks) are each seed's own,
  from its seeded construction, and travel with that seed's minibatches, so the
  loss, which sees params and a batch only, uses seed ``i``'s buffers in row
  ``i``.  The module runs in training mode: batch norm normalises with the
  statistics of the seed's own minibatch, as the built-in conv net does, and the
  running statistics it would update in place are updated on a copy and
  dropped, so the loss is a pure function of params and minibatch (the same
  call twice gives the same loss; a step never changes a buffer).
- **Minibatches.** Given arrays per split, row ``i`` draws its examples
  uniformly with replacement with ``seed_generator(seeds[i], "batches",
  split)``; given a function, the function is the Task's ``batches``.
- **Loss.** ``loss(module(inputs), *targets)`` is one seed's scalar loss (e.g.
  ``torch.nn.functional.cross_entropy``); the Task's loss is its value per seed,
  ``(S,)``.

- **Held-out metrics** (optional): given ``eval_examples``, the Task declares
  ``metrics = ("loss", *extra)`` and ``evaluate(params, split)`` gives, per seed,
  the loss (and each function of ``metrics``, ``fn(module(x), *targets)``, a mean
  over examples like the loss) averaged over the first ``eval_examples`` examples
  of ``eval_data[split]`` (default: ``data``), read ``batch_size`` at a time in
  training mode, as minibatches are.  Evaluation uses the buffers of seed 0's
  construction for every seed (batch norm's running statistics are not read in
  training mode; a module whose other buffers differ by seed should not declare
  held-out metrics).

The module's forward must be deterministic (no dropout: it would draw one
random stream for all seeds) and made of operations ``vmap`` can batch;
``nn.LSTM`` is not one of them (write the recurrence with ``nn.Linear``, as the
``char-lm`` family does), and an unbatchable operation is a one-line
:class:`~l2obench.ConfigError` naming it.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .errors import ConfigError
from .task import SPLITS, Split, seed_generator

__all__ = ["module_task", "ModuleTask", "ModuleBatch"]

#: minibatch indices are drawn this many steps at a time (a fixed number, so a
#: seed's stream does not depend on how long it is read)
_INDEX_CHUNK = 64

Data = Mapping[str, Sequence[Tensor]] | Callable[[Split, Sequence[int], Any], Iterator[Sequence[Tensor]]]


@dataclass(frozen=True)
class ModuleBatch:
    """One seed-batched minibatch of a :class:`ModuleTask`: the tensors ``(S, B, ...)``
    (the inputs first, then the targets) and each seed's buffers ``(S, ...)``."""

    tensors: tuple[Tensor, ...]
    buffers: dict[str, Tensor]


def _seeded_module(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``factory()`` with torch's global generator seeded for ``seed`` alone (and restored after)."""
    torch_seed = int(torch.randint(2**62, (1,), generator=seed_generator(seed, "init")))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed)
        module = factory()
    if not isinstance(module, nn.Module):
        raise ConfigError(f"module_task: the factory returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def _layout(module: nn.Module, group_of: Callable[[str], str]) -> tuple[list[str], dict[str, slice]]:
    """The parameter names in flat order (each group contiguous) and the groups' slices."""
    named = dict(module.named_parameters())
    if not named:
        raise ConfigError("module_task: the module has no parameters to optimize")
    dtypes = {p.dtype for p in named.values()}
    if len(dtypes) > 1 or not next(iter(dtypes)).is_floating_point:
        raise ConfigError(f"module_task: the module's parameters must share one floating dtype, not "
                          f"{', '.join(sorted(map(str, dtypes)))}")
    by_group: dict[str, list[str]] = {}
    for name in named:
        by_group.setdefault(str(group_of(name)), []).append(name)
    order, groups, start = [], {}, 0
    for group, names in by_group.items():
        size = sum(named[n].numel() for n in names)
        order += names
        groups[group] = slice(start, start + size)
        start += size
    return order, groups


def first_name_part(name: str) -> str:
    """The default grouping: ``encoder.0.weight`` -> ``encoder``."""
    return name.split(".", 1)[0]


class ModuleTask:
    """A Task whose optimizee is a module built by ``factory`` (see :func:`module_task`)."""

    def __init__(self, factory: Callable[[], nn.Module], data: Data, loss: Callable[..., Tensor], *,
                 batch_size: int | None = None, group_of: Callable[[str], str] = first_name_part,
                 eval_examples: int | None = None, metrics: Mapping[str, Callable[..., Tensor]] | None = None,
                 eval_data: Mapping[str, Sequence[Tensor]] | None = None):
        self.factory, self.data, self.loss_fn, self.batch_size = factory, data, loss, batch_size
        self.module = _seeded_module(factory, 0).train()
        self.names, self.groups = _layout(self.module, group_of)
        params = dict(self.module.named_parameters())
        self.shapes = [tuple(params[n].shape) for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.dim = sum(self.sizes)
        self.dtype = params[self.names[0]].dtype
        self.buffer_names = [n for n, _ in self.module.named_buffers()]
        if callable(data):
            if batch_size is not None:
                raise ConfigError("module_task: batch_size is for data given as arrays per split; "
                                  "a batches function chooses its own minibatch size")
        else:
            self._check_arrays(data, batch_size)
        self._batched_loss = vmap(self._one_seed_loss)
        self._heldout(eval_examples, dict(metrics or {}), eval_data)

    def _heldout(self, eval_examples: int | None, metrics: dict[str, Callable[..., Tensor]],
                 eval_data: Mapping[str, Sequence[Tensor]] | None) -> None:
        """Set up the optional held-out metrics (see the module's docstring)."""
        if eval_examples is None:
            if metrics or eval_data is not None:
                raise ConfigError("module_task: metrics and eval_data need eval_examples, the size of the "
                                  "held-out evaluation set")
            return
        if isinstance(eval_examples, bool) or not isinstance(eval_examples, int) or eval_examples < 1:
            raise ConfigError(f"module_task: eval_examples={eval_examples!r}; give a number of examples >= 1")
        if "loss" in metrics:
            raise ConfigError("module_task: metrics must not name 'loss'; the task's loss is its held-out loss")
        source = self.data if eval_data is None else eval_data
        if callable(source):
            raise ConfigError("module_task: held-out metrics need fixed arrays; with a batches function as data, "
                              "give eval_data = {split: (inputs, *targets)}")
        self._check_arrays(source, self.batch_size or 1)
        self.eval_arrays = {split: tuple(t[:eval_examples] for t in source[split]) for split in SPLITS}
        self.metric_fns = {"loss": self.loss_fn, **metrics}
        self.metrics = tuple(self.metric_fns)
        self._eval_buffers = {n: b.detach() for n, b in self.module.named_buffers()}
        # only a task with held-out data has ``evaluate`` (the Task protocol's optional method)
        self.evaluate = self._evaluate

    def _evaluate(self, params: Tensor, split: Split) -> dict[str, Tensor]:
        """Each held-out metric per seed, ``(S,)``, on ``split``'s fixed evaluation set."""
        arrays = tuple(t.to(params.device) for t in self.eval_arrays[split])
        S, n = params.shape[0], len(arrays[0])
        chunk = self.batch_size or n
        named = self.unflatten(params)
        buffers = {k: b.to(params.device).expand(S, *b.shape) for k, b in self._eval_buffers.items()}
        totals = {name: torch.zeros(S, dtype=torch.float64, device=params.device) for name in self.metric_fns}
        for start in range(0, n, chunk):
            part = tuple(a[start:start + chunk] for a in arrays)
            b = len(part[0])
            batched = tuple(a.unsqueeze(0).expand(S, *a.shape) for a in part)
            for name, fn in self.metric_fns.items():
                value = vmap(functools.partial(self._one_seed_metric, fn))(named, buffers, *batched)
                totals[name] += value.double() * b
        return {name: (total / n).to(params.dtype) for name, total in totals.items()}

    def _one_seed_metric(self, fn: Callable[..., Tensor], params: dict[str, Tensor], buffers: dict[str, Tensor],
                         inputs: Tensor, *targets: Tensor) -> Tensor:
        state = {**params, **{n: b.clone() for n, b in buffers.items()}}
        return fn(functional_call(self.module, state, (inputs,)), *targets)

    @staticmethod
    def _check_arrays(data: Mapping[str, Sequence[Tensor]], batch_size: int | None) -> None:
        missing = [s for s in SPLITS if s not in data]
        if missing:
            raise ConfigError(f"module_task: data has no split {', '.join(map(repr, missing))}; give arrays for "
                              f"each of {', '.join(SPLITS)}")
        for split in SPLITS:
            tensors = tuple(data[split])
            if not tensors or len({len(t) for t in tensors}) != 1 or len(tensors[0]) == 0:
                raise ConfigError(f"module_task: data[{split!r}] must be tensors with one and the same "
                                  f"(non-zero) number of examples along the first dimension")
        if batch_size is None or batch_size < 1:
            raise ConfigError(f"module_task: batch_size={batch_size!r}; data given as arrays needs a batch_size "
                              f"of at least 1")

    # -- the Task interface -------------------------------------------------------------

    def _construct(self, seed: int) -> nn.Module:
        module = _seeded_module(self.factory, seed)
        shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
        if shapes != dict(zip(self.names, self.shapes)):
            raise ConfigError(f"module_task: the factory built a module with other parameters for seed {seed}; "
                              f"it must build the same architecture every time")
        return module

    def init(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
        rows = []
        for s in seeds:
            params = dict(self._construct(s).named_parameters())
            rows.append(torch.cat([params[n].detach().reshape(-1) for n in self.names]))
        return torch.stack(rows).to(device) if rows else torch.empty(0, self.dim, dtype=self.dtype, device=device)

    def buffers(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """Each seed's buffers from its seeded construction, stacked: ``{name: (S, ...)}``."""
        if not self.buffer_names:
            return {}
        per_seed = [dict(self._construct(s).named_buffers()) for s in seeds]
        return {n: torch.stack([b[n].detach() for b in per_seed]).to(device) for n in self.buffer_names}

    def batches(self, split: Split, seeds: Sequence[int], device: torch.device | str = "cpu") -> Iterator[ModuleBatch]:
        buffers = self.buffers(seeds, device)
        if callable(self.data):
            stream = self.data(split, seeds, device)
        else:
            stream = self._sampled(split, seeds, device)
        for tensors in stream:
            yield ModuleBatch(tuple(tensors), buffers)

    def _sampled(self, split: Split, seeds: Sequence[int], device) -> Iterator[tuple[Tensor, ...]]:
        arrays = tuple(t.to(device) for t in self.data[split])
        n, S, B = len(arrays[0]), len(seeds), self.batch_size
        generators = [seed_generator(s, "batches", split) for s in seeds]
        while True:
            index = torch.stack([torch.randint(n, (_INDEX_CHUNK, B), generator=g) for g in generators], 1)
            for rows in index.to(arrays[0].device):
                flat = rows.reshape(-1)
                yield tuple(a.index_select(0, flat).view(S, B, *a.shape[1:]) for a in arrays)

    def unflatten(self, params: Tensor) -> dict[str, Tensor]:
        """Per-parameter views ``(S, *shape)`` of flat ``(S, dim)`` params, by one ``split``."""
        pieces = params.split(self.sizes, dim=-1)
        return {n: p.unflatten(-1, s) for n, p, s in zip(self.names, pieces, self.shapes)}

    def _one_seed_loss(self, params: dict[str, Tensor], buffers: dict[str, Tensor], inputs: Tensor,
                       *targets: Tensor) -> Tensor:
        # A copy of the buffers takes batch norm's in-place running-statistics update.
        state = {**params, **{n: b.clone() for n, b in buffers.items()}}
        return self.loss_fn(functional_call(self.module, state, (inputs,)), *targets)

    def loss(self, params: Tensor, batch: ModuleBatch) -> Tensor:
        try:
            out = self._batched_loss(self.unflatten(params), batch.buffers, *batch.tensors)
        except RuntimeError as exc:
            if "Batching rule not implemented" in str(exc) or "vmap" in str(exc):
                raise ConfigError(f"module_task: the module's forward cannot be batched over seeds with "
                                  f"torch.func.vmap: {str(exc).splitlines()[0]}") from None
            raise
        if out.shape != params.shape[:1]:
            raise ConfigError(f"module_task: the loss gave shape {tuple(out.shape[1:])} per seed; it must "
                              f"return one scalar per minibatch (reduce over the examples)")
        return out


def module_task(factory: Callable[[], nn.Module], data: Data, loss: Callable[..., Tensor], *,
                batch_size: int | None = None, group_of: Callable[[str], str] = first_name_part,
                eval_examples: int | None = None, metrics: Mapping[str, Callable[..., Tensor]] | None = None,
                eval_data: Mapping[str, Sequence[Tensor]] | None = None) -> ModuleTask:
    """A seed-batched Task from a module: ``factory()`` builds the optimizee (called
    once per seed, with torch's generator seeded for that seed), ``loss(module(x),
    *targets)`` is one seed's scalar loss on a minibatch ``(x, *targets)``.

    ``data`` is either ``{split: (inputs, *targets)}``, tensors with the examples
    along the first dimension for each of ``train``, ``validation`` and ``test``,
    from which each seed draws ``batch_size`` examples per step; or a function
    ``(split, seeds, device) -> iterator of (inputs, *targets)``, each ``(S, B,
    ...)`` with row ``i`` drawn for ``seeds[i]`` alone.  ``group_of`` maps a
    parameter's name to its group (default: the first part of the name).
    ``eval_examples`` (with optional extra ``metrics`` and ``eval_data``) gives the
    Task held-out metrics.  The rules (buffers, training mode, held-out metrics,
    what vmap must batch) are in this module's docstring.
    """
    return ModuleTask(factory, data, loss, batch_size=batch_size, group_of=group_of, eval_examples=eval_examples,
                      metrics=metrics, eval_data=eval_data)

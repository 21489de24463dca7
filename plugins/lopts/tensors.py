"""Per-tensor machinery shared by the feature-based learned optimizers: the task's
parameter groups as contiguous *segments* of the flat ``(S, D)`` parameter vector, the
means and maxima over each segment's coordinates (one value per seed and segment), and
the per-tensor second-moment normalisation of Metz et al.'s MLP optimizers, computed so
that no square overflows.

A learned optimizer of the literature sees a network as a list of tensors; here a task
gives one flat vector and names slices of it (``task.groups``).  Each group is one
"tensor"; coordinates outside every group form a tensor of their own per gap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from l2obench.api import ConfigError


@dataclass(frozen=True)
class Segments:
    """Contiguous segments covering coordinates ``0 .. dim-1`` in order, by their lengths.
    Reductions take ``(..., D)`` to ``(..., G)``, one value per segment; :meth:`expand`
    takes ``(..., G)`` back to ``(..., D)``.  Tensors keep any leading dimensions (features,
    seeds), so every seed is reduced over its own coordinates only."""

    lengths: tuple[int, ...]

    @classmethod
    def of(cls, groups: Mapping[str, slice] | None, dim: int, who: str) -> "Segments":
        """The task's groups as segments; a gap between groups (or before, after) is a segment too."""
        spans = sorted((sl.indices(dim), name) for name, sl in (groups or {}).items())
        lengths, at = [], 0
        for (start, stop, step), name in spans:
            if step != 1 or start < at:
                raise ConfigError(f"{who}: task group {name!r} ({start}:{stop}:{step}) overlaps another or has a "
                                  f"step; groups must be disjoint contiguous slices")
            if start > at:
                lengths.append(start - at)
            if stop > start:
                lengths.append(stop - start)
            at = max(at, stop)
        if at < dim or not lengths:
            lengths.append(dim - at)
        return cls(tuple(lengths))

    @property
    def count(self) -> int:
        return len(self.lengths)

    def _parts(self, x: Tensor) -> tuple[Tensor, ...]:
        return x.split(list(self.lengths), -1)

    def mean(self, x: Tensor) -> Tensor:
        if self.count == 1:
            return x.mean(-1, keepdim=True)
        return torch.stack([part.mean(-1) for part in self._parts(x)], -1)

    def amax(self, x: Tensor) -> Tensor:
        if self.count == 1:
            return x.amax(-1, keepdim=True)
        return torch.stack([part.amax(-1) for part in self._parts(x)], -1)

    def expand(self, y: Tensor) -> Tensor:
        """``(..., G)`` to ``(..., D)``: each segment's value on each of its coordinates."""
        if self.count == 1:
            return y.expand(*y.shape[:-1], self.lengths[0])
        return torch.cat([y[..., k:k + 1].expand(*y.shape[:-1], n) for k, n in enumerate(self.lengths)], -1)


def second_moment_normalise(x: Tensor, segments: Segments, eps: float = 1e-5) -> Tensor:
    """``x * rsqrt(eps + mean(x**2))``, the mean over each segment's coordinates, per feature and
    seed (learned_optimization's ``second_moment_normalizer``, per tensor).  Computed on ``x / s``
    with ``s`` the segment's largest ``|x|`` (held constant: the value and the gradient in ``x``
    do not depend on it), so features of any finite size give finite results."""
    s = segments.amax(x.detach().abs())
    s = torch.where(s > 0, s, torch.ones_like(s))
    y = x / segments.expand(s)
    factor = torch.rsqrt(eps / (s * s) + segments.mean(y * y))
    return y * segments.expand(factor)


def squared(x: Tensor) -> Tensor:
    """``x**2`` capped at the dtype's largest finite value, so that a running mean of squares of
    huge (finite) gradients stays finite."""
    return (x * x).clamp(max=torch.finfo(x.dtype).max)

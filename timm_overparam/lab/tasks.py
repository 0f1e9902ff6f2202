"""The exploration lab's two tasks (seed 003), their training recipes, data and metrics.

- ``PatternTask``: is the sub-sequence ``1 1 _ 1`` in a sequence of 64 floats drawn from
  U[-0.5, 0.5)? A positive sets positions ``i, i+1, i+3`` to 1.0 (``i`` uniform in 0..59, position
  ``i+2`` stays noise). Each of the 100 SGD steps (lr 0.1, momentum 0.5) sees one negative and one
  positive; accuracy on 1,000 fresh (negative, positive) pairs.
- ``BoolNetTask``: ``y = x1 > 0 and x2 > 0`` with ``x ~ N(0, I)``. 500 iterations of SGD (lr 0.1) on
  batches of 16; an iteration whose batch has fewer than 4 positives is skipped (it still counts);
  macro-F1 on 5,000 fresh points.

Every restart owns a ``torch.Generator`` seeded with its seed; ``draw`` takes everything the
training needs from it at once (inputs, labels, which steps run, a hypernetwork seed ``z`` and a
subspace point per step), then ``validation`` draws the evaluation set. A restart trained alone and
the same restart inside a vectorised batch therefore see exactly the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TASKS", "BoolNetTask", "Draws", "PatternTask", "Task", "accuracy", "macro_f1"]


@dataclass(frozen=True)
class Draws:
    """One restart's training stream: ``x (steps, batch, *input)``, ``y (steps, batch)``,
    ``active (steps,)`` (False: the step is skipped), ``z (steps, 2)`` hypernetwork seeds and
    ``points (steps,)`` subspace points in [0, 1) (float64)."""

    x: Tensor
    y: Tensor
    active: Tensor
    z: Tensor
    points: Tensor


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Share of ``1[logit > 0] == label`` over the last dimension (any leading dimensions).

    >>> accuracy(torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]]))
    tensor([0.6667])
    """
    return ((logits > 0) == (labels > 0.5)).to(logits.dtype).mean(-1)


def macro_f1(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over both classes of ``F1 = 2 TP / (2 TP + FP + FN)`` along the last dimension.

    A class that is never predicted has F1 0 (scikit-learn's ``f1_score(average='macro')``).

    >>> macro_f1(torch.tensor([[1.0, 1.0, -1.0, -1.0]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    tensor([0.7333])
    """
    pred, true = logits > 0, labels > 0.5
    scores = []
    for p, t in ((pred, true), (~pred, ~true)):
        tp = (p & t).sum(-1).to(logits.dtype)
        wrong = (p ^ t).sum(-1).to(logits.dtype)  # FP + FN
        scores.append(2 * tp / (2 * tp + wrong).clamp_min(1))
    return (scores[0] + scores[1]) / 2


@dataclass(frozen=True)
class PatternTask:
    """The pattern-1101 task and its recipe (see the module docstring).

    >>> d = PatternTask().draw(torch.Generator().manual_seed(0), torch.float32)
    >>> tuple(d.x.shape), d.y[0].tolist()
    ((100, 2, 1, 64), [0.0, 1.0])
    """

    length: int = 64
    steps: int = 100
    lr: float = 0.1
    momentum: float = 0.5
    validation_pairs: int = 1000
    name: str = "pattern"
    metric: str = "accuracy"
    size_name: str = "filters"
    success: float = 0.99  # default success threshold (accuracy)

    def _sequences(self, n: int, generator: torch.Generator, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``n`` negatives and ``n`` positives (each its own noise)."""
        neg = torch.rand(n, self.length, generator=generator, dtype=dtype) - 0.5
        pos = torch.rand(n, self.length, generator=generator, dtype=dtype) - 0.5
        start = torch.randint(0, self.length - 4, (n,), generator=generator)
        rows = torch.arange(n)
        for offset in (0, 1, 3):
            pos[rows, start + offset] = 1.0
        return neg, pos

    def draw(self, generator: torch.Generator, dtype: torch.dtype) -> Draws:
        """The training stream: step ``t`` is ``[negative, positive]`` with labels ``[0, 1]``."""
        neg, pos = self._sequences(self.steps, generator, dtype)
        x = torch.stack((neg, pos), dim=1).unsqueeze(2)
        y = torch.tensor([0.0, 1.0], dtype=dtype).expand(self.steps, 2)
        z = torch.randn(self.steps, 2, generator=generator, dtype=dtype)
        points = torch.rand(self.steps, generator=generator, dtype=torch.float64)
        return Draws(x, y, torch.ones(self.steps, dtype=torch.bool), z, points)

    def validation(self, generator: torch.Generator, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``validation_pairs`` negatives then as many positives: ``x (2P, 1, 64)``, ``y (2P,)``."""
        neg, pos = self._sequences(self.validation_pairs, generator, dtype)
        y = torch.cat(
            (torch.zeros(self.validation_pairs, dtype=dtype), torch.ones(self.validation_pairs, dtype=dtype))
        )
        return torch.cat((neg, pos)).unsqueeze(1), y

    def score(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Accuracy along the last dimension."""
        return accuracy(logits, labels)


@dataclass(frozen=True)
class BoolNetTask:
    """The BoolNet AND task and its recipe (see the module docstring).

    >>> d = BoolNetTask().draw(torch.Generator().manual_seed(0), torch.float32)
    >>> tuple(d.x.shape), bool((d.active == (d.y.sum(1) >= 4)).all())
    ((500, 16, 2), True)
    """

    steps: int = 500
    batch: int = 16
    min_positives: int = 4  # the seed skips a batch with fewer than batch / 4 positives
    lr: float = 0.1
    momentum: float = 0.0
    validation_points: int = 5000
    name: str = "boolnet"
    metric: str = "macro_f1"
    size_name: str = "width"
    success: float = 0.9  # default success threshold (macro-F1)

    @staticmethod
    def labels(x: Tensor) -> Tensor:
        """``1.0`` where both inputs are positive."""
        return ((x[..., 0] > 0) & (x[..., 1] > 0)).to(x.dtype)

    def draw(self, generator: torch.Generator, dtype: torch.dtype) -> Draws:
        """The training stream: ``steps`` batches of ``batch`` points, skipped ones included."""
        x = torch.randn(self.steps, self.batch, 2, generator=generator, dtype=dtype)
        y = self.labels(x)
        z = torch.randn(self.steps, 2, generator=generator, dtype=dtype)
        points = torch.rand(self.steps, generator=generator, dtype=torch.float64)
        return Draws(x, y, y.sum(1) >= self.min_positives, z, points)

    def validation(self, generator: torch.Generator, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``validation_points`` fresh points and their labels."""
        x = torch.randn(self.validation_points, 2, generator=generator, dtype=dtype)
        return x, self.labels(x)

    def score(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Macro-F1 along the last dimension."""
        return macro_f1(logits, labels)


Task = PatternTask | BoolNetTask
TASKS: dict[str, type[PatternTask] | type[BoolNetTask]] = {"pattern": PatternTask, "boolnet": BoolNetTask}

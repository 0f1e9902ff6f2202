"""The synthetic regression data of seed 002: a sine on separable inputs, and a constant.

- ``SinDataset`` (``synthetic/sin``): ``K = e^(-4c) / (8N)``, ``x ~ U(-sqrt K, sqrt K)``,
  ``y = sin(pi x / sqrt K)``; defaults ``c = 0.01``, ``N = 100000``. Every input satisfies the
  separability condition of Cont, Rossier and Xu's assumption (iii), ``|x_i x_j| <= K``, since
  ``|x_i| <= sqrt K`` (the original rejection-samples against that bound, which on this interval
  rejects nothing, so plain uniform draws are the same law).
- ``ConstantDataset`` (``synthetic/constant``): ``x ~ U[-1, 1]``, ``y = c``; default ``c = 0.1``
  (the seed's README; its code's default is 0.01, pass ``--synthetic-c 0.01`` for that).

Both draw ``N`` samples with a torch generator seeded with ``seed`` (the run's ``--seed``), then
split them 90/10 with a seeded permutation: ``validation`` holds ``N // 10`` samples, ``train`` the
rest (torch's ``random_split(data, [0.9, 0.1])`` sizes). Items are float32 tensors ``x`` and
``y`` of shape ``(1,)``: vectors, not images, so ``tensor_inputs`` tells the trainer to skip
the image transforms, and ``task`` says the targets are regression targets.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SYNTHETIC", "ConstantDataset", "SinDataset", "SyntheticDataset", "sin_bound"]

SPLITS = ("train", "validation")


def sin_bound(c: float, num_samples: int) -> float:
    """``K = e^(-4c) / (8N)``: the separability bound of the sine data (its inputs lie in
    ``[-sqrt K, sqrt K]``).

    >>> round(sin_bound(0.0, 1), 6)
    0.125
    """
    return math.exp(-4 * c) / (8 * num_samples)


def _float32_root(bound: float) -> float:
    """The largest float32 ``r`` with ``r * r <= bound`` (the product exact in float64).

    >>> _float32_root(4.0)
    2.0
    """
    r = torch.tensor(math.sqrt(bound), dtype=torch.float32)
    while r.double() * r.double() > bound:
        r = torch.nextafter(r, torch.zeros((), dtype=torch.float32))
    return r.item()


class SyntheticDataset(Dataset):
    """``N`` samples ``(x, y)`` drawn by ``draw(N, generator)`` with a generator seeded by ``seed``,
    split 90/10 into ``train`` and ``validation`` by a seeded permutation (the split keeps the
    drawn order). ``x``/``y`` are the split's tensors, shape ``(n, 1)`` each, float32.

    Subclasses set ``name``, ``default_c`` and ``draw``.
    """

    name = "synthetic"
    default_c = 0.0
    task = "regression"  # float targets: the trainer's regression task (p-loss, loss/mae metrics)
    tensor_inputs = True  # items are ready tensors: no image transforms, no timm data config
    classes = None  # regression: no classes
    transform = None  # items are not transformed (kept for the loaders' interface)

    def __init__(
        self, split: str = "train", *, c: float | None = None, num_samples: int = 100_000, seed: int = 0
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"{self.name} has the splits 'train' and 'validation', got {split!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 10:
            raise ValueError(
                f"{self.name}: the number of samples must be an integer >= 10 (10% are the validation "
                f"split), got {num_samples!r}"
            )
        self.c = float(self.default_c if c is None else c)
        if not math.isfinite(self.c):
            raise ValueError(f"{self.name}: c must be a finite number, got {c!r}")
        self.split, self.num_samples, self.seed = split, num_samples, seed
        generator = torch.Generator().manual_seed(seed)
        x, y = self.draw(num_samples, generator)
        order = torch.randperm(num_samples, generator=generator)
        n_val = num_samples // 10
        keep = order[n_val:] if split == "train" else order[:n_val]
        keep = keep.sort().values
        self.x, self.y = x[keep].contiguous(), y[keep].contiguous()

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` inputs and targets, each ``(n, 1)`` float32."""
        raise NotImplementedError

    @property
    def targets(self) -> Tensor:
        """The targets of the split, ``(n, 1)``."""
        return self.y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        """A batch's items in one indexing (torch's DataLoader uses it; ~6x faster at full batch)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self.x[index], self.y[index], strict=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.split!r}, c={self.c!r}, num_samples={self.num_samples}, seed={self.seed})"


class SinDataset(SyntheticDataset):
    """``y = sin(pi x / sqrt K)`` on ``x ~ U(-sqrt K, sqrt K)``, ``K = e^(-4c) / (8N)`` (``sin_bound``).

    ``y`` is computed in float64 from the stored float32 ``x`` and rounded to float32.

    >>> ds = SinDataset("validation", num_samples=100, seed=0)
    >>> len(ds), ds[0][0].shape, ds[0][1].dtype
    (10, torch.Size([1]), torch.float32)
    """

    name = "synthetic/sin"
    default_c = 0.01

    @property
    def bound(self) -> float:
        """``K``: every input has ``|x| <= sqrt K``, so ``|x_i x_j| <= K``."""
        return sin_bound(self.c, self.num_samples)

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        half = math.sqrt(self.bound)
        x = ((torch.rand(n, 1, generator=generator, dtype=torch.float64) - 0.5) * (2 * half)).float()
        limit = _float32_root(self.bound)
        x = x.clamp(-limit, limit)  # float32 rounding must not break |x_i x_j| <= K
        y = torch.sin(math.pi * x.double() / half).float()
        return x, y


class ConstantDataset(SyntheticDataset):
    """``y = c`` on ``x ~ U[-1, 1]``.

    >>> ds = ConstantDataset("train", num_samples=20, c=0.5)
    >>> len(ds), ds.y.unique().tolist()
    (18, [0.5])
    """

    name = "synthetic/constant"
    default_c = 0.1

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x = ((torch.rand(n, 1, generator=generator, dtype=torch.float64) - 0.5) * 2).float()
        return x, torch.full((n, 1), self.c, dtype=torch.float32)


SYNTHETIC: dict[str, type[SyntheticDataset]] = {
    "synthetic/sin": SinDataset,
    "synthetic/constant": ConstantDataset,
}


def open_synthetic(name: str, split: str, **kwargs: Any) -> SyntheticDataset:
    """The split of the synthetic dataset ``name`` (``synthetic/sin`` or ``synthetic/constant``).

    >>> len(open_synthetic("synthetic/constant", "validation", num_samples=50))
    5
    """
    if name not in SYNTHETIC:
        raise ValueError(f"unknown synthetic dataset {name!r}: use one of {sorted(SYNTHETIC)}")
    return SYNTHETIC[name](split, **kwargs)

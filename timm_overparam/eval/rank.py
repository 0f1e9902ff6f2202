"""Effective rank of a matrix and of a model's penultimate embeddings (Huh et al. 2021).

The low-rank simplicity bias paper (Huh et al., "The Low-Rank Simplicity Bias in Deep Networks",
2021) measures a representation by the Shannon entropy of its normalised singular values,
``rho(A) = -sum_i p_i log p_i`` with ``p_i = s_i / sum_j s_j``, and calls ``rho`` the effective
rank; Roy & Vetterli (2007), who defined it, take ``exp(rho)``, a number between 1 and the rank.
``EffectiveRank`` carries both: ``entropy`` (Huh et al.'s plots) and ``erank`` (Roy & Vetterli's).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from timm_overparam.core.modes import preserve_modes
from timm_overparam.eval.metrics import Gather

__all__ = ["EffectiveRank", "effective_rank", "embedding_rank", "embeddings"]


@dataclass(frozen=True)
class EffectiveRank:
    """``entropy`` of the normalised singular values (nats; Huh et al.'s effective rank) and
    ``erank = exp(entropy)`` (Roy & Vetterli's effective rank).

    >>> EffectiveRank(entropy=0.0, erank=1.0).erank
    1.0
    """

    entropy: float
    erank: float


def effective_rank(matrix: Tensor) -> EffectiveRank:
    """The effective rank of a 2-D ``matrix``: singular values ``s`` (float64, ``torch.linalg.svdvals``),
    ``p = s / sum(s)``, ``entropy = -sum p log p`` (natural log, ``0 log 0 = 0``), ``erank = exp(entropy)``.

    >>> r = effective_rank(torch.eye(4))
    >>> round(r.erank, 9), round(r.entropy, 9) == round(math.log(4), 9)
    (4.0, True)
    """
    if not isinstance(matrix, Tensor) or matrix.ndim != 2:
        shape = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
        raise ValueError(f"the effective rank needs a 2-D tensor (rows x columns), got {shape}")
    if not torch.isfinite(matrix).all():
        raise ValueError("the matrix has non-finite values (nan or inf): its effective rank is undefined")
    singular = torch.linalg.svdvals(matrix.to(torch.float64))
    total = singular.sum()
    if not total > 0:
        raise ValueError(
            f"the matrix {tuple(matrix.shape)} is zero (or empty): its effective rank is undefined"
        )
    p = singular / total
    p = p[p > 0]
    entropy = -(p * p.log()).sum().item()
    return EffectiveRank(entropy=entropy, erank=math.exp(entropy))


@torch.no_grad()
def embeddings(model: nn.Module, loader: Iterable, gather: Gather | None = None) -> Tensor:
    """The penultimate embeddings (N, D) of ``loader``'s inputs: timm's
    ``forward_head(forward_features(x), pre_logits=True)`` in eval mode (training flags restored),
    on the model's device, each batch gathered with ``gather`` (e.g. ``accelerator.gather_for_metrics``).

    >>> import timm
    >>> model = timm.create_model("test_resnet", num_classes=3)
    >>> embeddings(model, [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))]).shape
    torch.Size([2, 96])
    """
    if not (
        callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))
    ):
        raise TypeError(
            f"{type(model).__name__} has no forward_features/forward_head: embeddings need a timm model"
        )
    device = next(model.parameters()).device
    batches = []
    with preserve_modes(model, training=False):
        for x, *_ in loader:
            out = model.forward_head(model.forward_features(x.to(device)), pre_logits=True).flatten(1)
            batches.append(out if gather is None else gather(out))
    if not batches:
        raise ValueError("the loader yielded no batches")
    return torch.cat(batches)


def embedding_rank(model: nn.Module, loader: Iterable, gather: Gather | None = None) -> EffectiveRank:
    """``effective_rank`` of the model's penultimate ``embeddings`` on ``loader``.

    >>> import timm
    >>> model = timm.create_model("test_resnet", num_classes=3)
    >>> 1 <= embedding_rank(model, [(torch.randn(8, 3, 32, 32), torch.zeros(8))]).erank <= 8
    True
    """
    return effective_rank(embeddings(model, loader, gather))

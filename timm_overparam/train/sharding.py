"""FSDP2 units of a timm model: its blocks, as timm groups them, named where accelerate looks.

accelerate's FSDP2 ``TRANSFORMER_BASED_WRAP`` policy gives every module of the classes listed in
``model._no_split_modules`` (the convention of Hugging Face models) its own sharded group, all-gathered
for its forward and backward only. timm models do not set it; ``mark_blocks`` names the classes of
their blocks as timm itself groups them (``model.group_matcher(coarse=False)``, the grouping of
layer-wise learning-rate decay): a ResNet's ``BasicBlock``/``Bottleneck``, a ViT's ``Block``, a
RegNet's ``Bottleneck``. So one FSDP config serves every architecture. accelerate's
``SIZE_BASED_WRAP`` cannot: it also picks containers without a ``forward`` (a parametrized layer's
``parametrizations``), which ``fully_shard`` refuses.

A block whose own parameters are parametrized (ConvNeXt's layer-scale ``gamma`` in a subspace
model) has a class of its own per instance (``torch.nn.utils.parametrize``), which a class name
cannot select; the nearest enclosing module of the model's own code is taken instead (the stage).
"""

from __future__ import annotations

from timm.models import group_modules
from torch import nn
from torch.nn.utils import parametrize


def _own(module: nn.Module) -> bool:
    """A module of the model's own code (not torch's layers or containers), selectable by class name."""
    return not parametrize.is_parametrized(module) and not type(module).__module__.startswith("torch.")


def block_classes(model: nn.Module) -> list[str]:
    """Names of the classes of ``model``'s blocks: for each of timm's fine parameter groups, the
    innermost module of the model's own code that holds the whole group, where two groups or more
    have that class (the stem and the head are left to the root group); [] for models without
    ``group_matcher``.

    >>> import timm
    >>> block_classes(timm.create_model("resnet18"))
    ['BasicBlock']
    """
    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        return []
    modules = dict(model.named_modules())
    names: list[str] = []
    for members in group_modules(model, matcher(coarse=False)).values():
        parts = [m.split(".") for m in members]
        prefix = []
        for column in zip(*parts, strict=False):
            if len(set(column)) > 1:
                break
            prefix.append(column[0])
        while prefix and not _own(modules[".".join(prefix)]):
            prefix.pop()
        if prefix:
            names.append(type(modules[".".join(prefix)]).__name__)
    return [name for name in dict.fromkeys(names) if names.count(name) >= 2]


def mark_blocks(model: nn.Module) -> list[str]:
    """Set ``model._no_split_modules`` to ``block_classes(model)`` unless the model sets it; returns it.

    Example: ``mark_blocks(timm.create_model("vit_base_patch16_224_op2"))`` gives ``['Block']``
    """
    if getattr(model, "_no_split_modules", None) is None:
        model._no_split_modules = block_classes(model)
    return list(model._no_split_modules)

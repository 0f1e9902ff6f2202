"""Weights as safetensors: saved atomically (a temp file, then a rename), loaded with checked shapes."""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from timm_overparam.core.atomic import atomic_path


def save_weights(
    module: nn.Module,
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    *,
    parametrized: bool = False,
) -> Path:
    """Write ``module.state_dict()`` to a safetensors file that stock timm loads without this plugin.

    The file appears complete or not at all. Parametrized (expanded or subspace) models are
    refused unless ``parametrized`` (training state, e.g. an EMA copy): export ``collapse(model)``
    or a subspace point instead.

    Example: ``save_weights(collapse(timm.create_model("resnet18_op3")), "collapsed.safetensors")``
    """
    left = [n for n, m in module.named_modules() if parametrize.is_parametrized(m)]
    if left and not parametrized:
        raise ValueError(
            f"{left[0]!r} is still parametrized: save timm_overparam.collapse(model) "
            "(or a subspace point) instead of the training model"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share memory; weights of a stock model are saved one by one
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata=metadata)
    return path


def load_weights(module: nn.Module, path: str | os.PathLike) -> None:
    """Load a safetensors file into ``module`` strictly; a bad file or a shape mismatch is a ValueError.

    The error names the file and the first offending key (a classifier of another size names the
    fix: ``--num-classes``).

    Example: ``load_weights(timm.create_model("resnet18", num_classes=10), "collapsed.safetensors")``
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    expected = module.state_dict()
    try:
        with safe_open(path, framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(
            f"{str(path)!r} is not a readable safetensors file (truncated or foreign?): {e}"
        ) from e
    missing, unknown = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or unknown:
        raise ValueError(
            f"{str(path)!r} does not fit the model: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unknown)} unknown keys {unknown[:3]} (another architecture or family?)"
        )
    for key, shape in shapes.items():
        if shape != tuple(expected[key].shape):
            raise ValueError(
                f"{str(path)!r}: {key} has shape {list(shape)}, the model's is {list(expected[key].shape)} "
                "(a different --num-classes / --in-chans / model kwargs?)"
            )
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{str(path)!r} could not be read (truncated?): {e}") from e
    module.load_state_dict(state, strict=True)

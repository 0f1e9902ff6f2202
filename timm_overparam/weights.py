"""Saving stock-timm weights with safetensors, atomically (a temp file, then a rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize


def save_weights(module: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write ``module.state_dict()`` to a safetensors file that stock timm loads without this plugin.

    The file appears complete or not at all. Parametrized (expanded or subspace) models are
    refused: collapse them or extract a point first.

    Example: ``save_weights(collapse(timm.create_model("resnet18_op3")), "collapsed.safetensors")``
    """
    left = [n for n, m in module.named_modules() if parametrize.is_parametrized(m)]
    if left:
        raise ValueError(
            f"{left[0]!r} is still parametrized: save timm_overparam.collapse(model) "
            "(or a subspace point) instead of the training model"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share memory; weights of a stock model are saved one by one
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

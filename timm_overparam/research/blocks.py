"""Block weights of a residual network as one tensor, their path ``t -> L^beta vec(W_t)``, and files.

``block_weights(model)``: the (L, dim, dim) stack (the model's ``block_weights()``, or the weights
of a ``blocks`` ModuleList); ``weights_path(W, beta)``: the (L, dim*dim) path the p-variation and
the path plots read; ``save_blocks`` / ``load_blocks``: a safetensors file with the one tensor
``'blocks'`` (what a training run exports as ``blocks.safetensors``).
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from timm_overparam.core.atomic import atomic_path

__all__ = ["BLOCKS_FILE", "BLOCKS_KEY", "block_weights", "load_blocks", "save_blocks", "weights_path"]

BLOCKS_KEY = "blocks"  # the tensor's key in a blocks file
BLOCKS_FILE = "blocks.safetensors"  # the name a training run exports it under


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def block_weights(model: nn.Module) -> Tensor:
    """The current weights of ``model``'s residual blocks as one (L, *shape) tensor, detached.

    The model's own ``block_weights()`` if it has one (``depth_limit_resnet``: composed weights for
    op variants, the current point's for subspace ones); else the ``.weight`` of every module of a
    ``blocks`` ModuleList, which must all have one shape. Anything else is a ValueError.

    >>> net = nn.Module(); net.blocks = nn.ModuleList(nn.Linear(2, 2, bias=False) for _ in range(3))
    >>> block_weights(net).shape
    torch.Size([3, 2, 2])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"block_weights takes a model (nn.Module), got {type(model).__name__}")
    model = _unwrap(model)
    name = type(model).__name__
    own = getattr(model, "block_weights", None)
    if callable(own):
        out = own()
        if not isinstance(out, Tensor) or out.dim() < 2:
            raise ValueError(f"{name}.block_weights() must return an (L, dim, dim) tensor, got {out!r:.80}")
        return out.detach()
    blocks = getattr(model, "blocks", None)
    need = (
        "a block_weights() method returning the (L, dim, dim) stack, or a `blocks` ModuleList whose "
        "modules each hold one `.weight` of a common shape"
    )
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        raise ValueError(f"{name} has no residual blocks to read: it needs {need}")
    weights = []
    for i, block in enumerate(blocks):
        w = getattr(block, "weight", None)
        if not isinstance(w, Tensor):
            raise ValueError(
                f"{name}.blocks[{i}] ({type(block).__name__}) has no .weight tensor: {name} needs {need}"
            )
        if weights and w.shape != weights[0].shape:
            raise ValueError(
                f"{name}.blocks[{i}].weight has shape {list(w.shape)}, blocks[0]'s {list(weights[0].shape)}: "
                f"{name} needs {need}"
            )
        weights.append(w.detach())
    with torch.no_grad():
        return torch.stack(weights)


def _as_blocks(model_or_tensor: nn.Module | Tensor) -> Tensor:
    if isinstance(model_or_tensor, Tensor):
        if model_or_tensor.dim() < 2 or model_or_tensor.shape[0] == 0:
            raise ValueError(
                f"block weights are an (L, dim, dim) tensor with L >= 1, got shape {list(model_or_tensor.shape)}"
            )
        return model_or_tensor.detach()
    return block_weights(model_or_tensor)


def weights_path(model_or_tensor: nn.Module | Tensor, beta: float) -> Tensor:
    """The weights' path ``t = 1..L -> L^beta vec(W_t)`` as an (L, dim*dim) tensor.

    >>> weights_path(torch.ones(4, 2, 2), beta=0.5).tolist()[0]
    [2.0, 2.0, 2.0, 2.0]
    """
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number (the path is L^beta vec(W_t)), got {beta!r}")
    w = _as_blocks(model_or_tensor)
    L = w.shape[0]
    return w.reshape(L, -1) * float(L) ** float(beta)


def save_blocks(
    model_or_tensor: nn.Module | Tensor, path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Write the block weights (``block_weights(model)``, or a tensor) to ``path`` under the key
    ``'blocks'``, atomically (the file appears complete or not at all); returns the path.

    Example: ``save_blocks(model, run_folder / "blocks.safetensors")``
    """
    w = _as_blocks(model_or_tensor)
    if w.is_meta:
        raise ValueError("the block weights are on the meta device (no values): materialise the model first")
    meta = {"format": "timm_overparam.blocks", "shape": "x".join(str(s) for s in w.shape)}
    if isinstance(model_or_tensor, nn.Module):
        arch = (getattr(_unwrap(model_or_tensor), "pretrained_cfg", None) or {}).get("architecture")
        if arch:
            meta["architecture"] = str(arch)
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor = w.to("cpu").contiguous().clone()
    with atomic_path(path) as tmp:
        save_file({BLOCKS_KEY: tensor}, tmp, metadata=meta)
    return path


def load_blocks(path: str | os.PathLike) -> Tensor:
    """The (L, dim, dim) block weights of a file ``save_blocks`` (or a training run) wrote.

    A missing or unreadable file, or one without the tensor ``'blocks'``, is a ValueError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"blocks file {str(path)!r} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            if BLOCKS_KEY not in keys:
                raise ValueError(
                    f"{str(path)!r} has no tensor {BLOCKS_KEY!r} (keys: {keys[:5]}): "
                    "not a blocks file written by save_blocks or a training run"
                )
            out = f.get_tensor(BLOCKS_KEY)
    except (SafetensorError, OSError) as e:
        raise ValueError(
            f"{str(path)!r} is not a readable safetensors file (truncated or foreign?): {e}"
        ) from e
    if out.dim() < 2 or out.shape[0] == 0:
        raise ValueError(f"{str(path)!r}: 'blocks' has shape {list(out.shape)}, not (L, dim, dim)")
    return out

"""Home of the research instruments of seed 002 (issue 14): depth-limit residual networks and their
data, p-variation of weight paths, Omega(t), loss landscapes, path tools and curve fits, hooked into
training as callbacks.

- ``p_variation(path, p)``: the exact p-variation of a discrete path (``pvariation.py``).
- ``depth_limit_resnet`` (``depth_limit.py``) and ``cifar_resnet56/104/224`` (``cifar_resnet.py``):
  timm models, registered (with their ``_op*``/``_line``/... variants) by ``import timm_overparam``.
- ``block_weights``, ``weights_path``, ``save_blocks``, ``load_blocks`` (``blocks.py``): a model's
  block weights, their path ``t -> L^beta vec(W_t)``, ``blocks.safetensors`` files; path plots:
  ``python -m timm_overparam.research.paths`` (``paths.py``).
"""

from timm_overparam.research.blocks import block_weights, load_blocks, save_blocks, weights_path
from timm_overparam.research.pvariation import p_variation

__all__ = ["block_weights", "load_blocks", "p_variation", "save_blocks", "weights_path"]

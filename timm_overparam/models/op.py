"""``<arch>_op2``, ``<arch>_op3``, ``<arch>_op4``: every timm architecture, expand-and-project.

``op_*`` kwargs of ``timm.create_model`` are the options of ``timm_overparam.overparameterize``
(``op_depth``, ``op_width``, ``op_hidden``, ``op_batch_norm``, ``op_residual``, ...).
"""

from typing import Any

from timm_overparam.expand.convert import overparameterize
from timm_overparam.registry import Family, register_family

default_cfgs: dict[str, Any] = {}

FAMILY = Family(
    module=__name__,
    prefix="op_",
    variants={f"op{d}": {"depth": d} for d in (2, 3, 4)},
    convert=overparameterize,
    slots=lambda fixed, inputs_only: (
        ("factors.0",) if inputs_only else tuple(f"factors.{i}" for i in range(fixed["depth"]))
    ),
)

register_family(FAMILY)

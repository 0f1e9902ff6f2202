"""``<arch>_line``, ``<arch>_curve``, ``<arch>_simplex``: every timm architecture as a subspace.

``subspace_*`` kwargs of ``timm.create_model`` are the options of ``timm_overparam.subspace``
(``subspace_n``, ``subspace_layerwise``, ``subspace_init``, ``subspace_noise``, ``subspace_include``,
``subspace_exclude``, ``subspace_min_params``, ``subspace_regularize``). ``init='independent'``
draws the extra vertices from fresh instances of the base model: timm's own init.
"""

from typing import Any

from timm_overparam.registry import Family, register_family
from timm_overparam.subspace.parametrization import SubspaceConfig, subspace

default_cfgs: dict[str, Any] = {}

FAMILY = Family(
    module=__name__,
    prefix="subspace_",
    variants={shape: {"shape": shape} for shape in ("line", "curve", "simplex")},
    convert=subspace,
    factory="factory",
    slots=lambda fixed, inputs_only: tuple(f"vertices.{i}" for i in range(SubspaceConfig(**fixed).n)),
)

register_family(FAMILY)

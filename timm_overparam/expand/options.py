"""``ExpandOptions``: the options of the expand-and-project family, validated once.

>>> ExpandOptions(residual=True, residual_intervals=-1, depth=3).intervals
(3,)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

Hidden = Literal["out", "min"]
Init = Literal["preserve", "original"]


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    """A real number (not a bool) that is neither infinite nor NaN."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ExpandOptions:
    """Options of the expand-and-project family (see ``overparameterize``).

    >>> ExpandOptions(depth=3, width=2, batch_norm=True).depth
    3
    """

    depth: int = 2
    width: float = 1.0
    hidden: Hidden = "min"
    batch_norm: bool = False
    residual: bool = False
    residual_intervals: int | tuple[int, ...] = 2
    learnable_residual: bool = False
    factor_bias: bool = False
    init: Init = "preserve"
    bn_eps: float = 1e-5
    bn_momentum: float | None = 0.1

    def __post_init__(self) -> None:
        if not _is_int(self.depth) or self.depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {self.depth!r}")
        if not _is_finite(self.width) or self.width <= 0:
            raise ValueError(
                f"width must be a finite number > 0 (1 keeps the layer's size), got {self.width!r}"
            )
        if not isinstance(self.hidden, str) or self.hidden not in ("out", "min"):
            raise ValueError(f"hidden must be 'out' (the original) or 'min', got {self.hidden!r}")
        if not isinstance(self.init, str) or self.init not in ("preserve", "original"):
            raise ValueError(f"init must be 'preserve' or 'original', got {self.init!r}")
        for name in ("batch_norm", "residual", "learnable_residual", "factor_bias"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        iv = self.residual_intervals
        ivs = (iv,) if _is_int(iv) else tuple(iv) if isinstance(iv, (list, tuple)) else None
        if not ivs or any(not _is_int(n) or (n < 1 and n != -1) for n in ivs):
            raise ValueError(
                f"residual_intervals must be a positive int, -1 (= depth) or a list of them, got {iv!r}"
            )
        object.__setattr__(self, "residual_intervals", ivs)
        if not _is_finite(self.bn_eps) or self.bn_eps <= 0:
            raise ValueError(
                f"bn_eps must be a finite number > 0 (batch-norm's default is 1e-5), got {self.bn_eps!r}"
            )
        m = self.bn_momentum
        if m is not None and (not _is_finite(m) or not 0 <= m <= 1):
            raise ValueError(
                f"bn_momentum must be a number in [0, 1] or None (cumulative average), got {m!r}"
            )

    @property
    def intervals(self) -> tuple[int, ...]:
        """Residual intervals with -1 resolved to ``depth``, empty without residual links."""
        if not self.residual:
            return ()
        return tuple(sorted({self.depth if n == -1 else n for n in self.residual_intervals}))

"""Neural-network subspaces: every selected tensor becomes a line, a Bezier curve or a simplex.

``SubspaceParam`` is a ``torch.nn.utils.parametrize`` parametrization, like ``ExpandProject``: the
module keeps its own ``forward`` and every reader of the tensor sees ``sum_i c_i V_i``. The vertices
``V_i`` are the parametrization's own parameters and the coefficients ``c`` (the current point) a
non-persistent buffer. ``subspace`` converts a model with the shared conversion walk. Points live
in ``subspace.points``, the regulariser in ``subspace.regularizer``.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import numbers
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from timm_overparam.core.unparametrize import WeightList
from timm_overparam.core.walk import Selection, Target, walk

Shape = Literal["line", "curve", "simplex"]
VertexInit = Literal["independent", "copy"]  # how the extra vertices start (``subspace(init=...)``)

_VERTICES = {"line": 2, "curve": 3, "simplex": 3}  # default n; lines and curves have no other


def _check_shape(shape: str, n: int) -> None:
    if not isinstance(shape, str) or shape not in _VERTICES:
        raise ValueError(f"shape must be 'line', 'curve' or 'simplex', got {shape!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ValueError(f"a subspace needs an integer n >= 2 vertices, got {n!r}")
    if shape != "simplex" and n != _VERTICES[shape]:
        raise ValueError(f"a {shape} has {_VERTICES[shape]} vertices, got n={n}; use shape='simplex'")


def coefficients(shape: str, n: int, point: float | Sequence[float]) -> tuple[float, ...]:
    """The vertex weights of a validated ``point``: ``(1-a, a)``, Bezier's, or the coordinates."""
    if shape != "simplex":
        if isinstance(point, Tensor) and point.dim() == 0:
            point = point.item()
        if not isinstance(point, numbers.Real) or isinstance(point, bool):
            raise ValueError(f"a {shape} point is a number in [0, 1], got {point!r}")
        a = float(point)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"point {point!r} is outside [0, 1]")
        return (1.0 - a, a) if shape == "line" else ((1.0 - a) ** 2, 2.0 * a * (1.0 - a), a * a)
    if isinstance(point, Tensor):
        point = point.tolist()
    if not isinstance(point, Sequence) or not all(
        isinstance(t, numbers.Real) and not isinstance(t, bool) for t in point
    ):
        raise ValueError(f"a simplex point is {n} barycentric coordinates, got {point!r}")
    if len(point) != n:
        raise ValueError(f"a simplex point has {n} coordinates, got {len(point)} in {point!r}")
    for t in point:
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"coordinate {t!r} of point {point!r} is outside [0, 1]")
    if abs(sum(point) - 1.0) > 1e-6:
        raise ValueError(f"coordinates of point {point!r} sum to {sum(point)!r}, not 1")
    return tuple(float(t) for t in point)


def _midpoint(shape: str, n: int) -> float | tuple[float, ...]:
    return (1.0 / n,) * n if shape == "simplex" else 0.5


class SubspaceParam(nn.Module):
    """``tensor = sum_i c_i V_i``: the vertices are this module's parameters, ``c`` the current point.

    Line ``(1-a, a)`` (computed with ``torch.lerp``), quadratic Bezier curve
    ``((1-a)^2, 2a(1-a), a^2)`` (vertex 1 is the control point), simplex: barycentric coordinates.
    It starts at the midpoint. Assigning the tensor sets every vertex to the assigned value.

    >>> lin = nn.Linear(4, 2)
    >>> p = SubspaceParam("line", [lin.weight.detach(), torch.zeros(2, 4)])
    >>> _ = parametrize.register_parametrization(lin, "weight", p)
    >>> p.set_point(1.0); bool((lin.weight == 0).all())
    True
    """

    def __init__(self, shape: Shape, vertices: Sequence[Tensor], *, regularized: bool = True) -> None:
        super().__init__()
        _check_shape(shape, len(vertices))
        self.shape = shape
        self.regularized = regularized
        self.vertices = WeightList(vertices)  # vertex i is parameter ``vertices.<i>.weight``
        first = self.vertices[0]
        self.register_buffer(
            "coefficients",
            torch.empty(len(vertices), dtype=first.dtype, device=first.device),
            persistent=False,
        )
        self._registering = True  # the first right_inverse call comes from registration
        self.set_point(_midpoint(shape, len(vertices)))

    @property
    def n(self) -> int:
        """Number of vertices."""
        return len(self.vertices)

    def slots(self, inputs_only: bool = False) -> tuple[str, ...]:
        """Names (relative to this parametrization) of its vertices; each holds the tensor's full shape.

        Every vertex is linear in the input channels, so timm's ``first_conv`` and ``classifier``
        name them all (``inputs_only`` changes nothing).

        >>> SubspaceParam("line", [torch.zeros(2), torch.ones(2)]).slots()
        ('vertices.0', 'vertices.1')
        """
        return tuple(f"vertices.{i}" for i in range(self.n))

    def __prepare_scriptable__(self) -> nn.Module:
        raise TypeError(
            "TorchScript cannot compile a subspace tensor (a torch.nn.utils.parametrize "
            "parametrization): script timm_overparam.extract_point(model, point) instead, or export "
            "the training form with torch.export.export"
        )

    def set_point(self, point: float | Sequence[float]) -> None:
        """Move to ``point`` (a number in [0, 1], or barycentric coordinates for a simplex)."""
        self.coefficients.copy_(torch.tensor(coefficients(self.shape, self.n, point), dtype=torch.float64))

    def forward(self) -> Tensor:
        # a copy, so that moving to another point before backward (num_samples > 1) keeps this graph valid
        v, c = self.vertices, self.coefficients.clone()
        if self.shape == "line":
            return torch.lerp(v[0], v[1], c[1])
        out = v[0] * c[0]
        for i in range(1, len(v)):
            out = torch.addcmul(out, v[i], c[i])
        return out

    def right_inverse(self, tensor: Tensor) -> tuple[()]:
        """Drop the original tensor (vertex 0 holds it); a later assignment sets every vertex."""
        if self._registering:
            self._registering = False
        else:
            with torch.no_grad():
                for v in self.vertices:
                    v.copy_(tensor)
        return ()


@dataclass(frozen=True)
class SubspaceConfig:
    """Options of a subspace conversion (see ``subspace``); the model keeps them as ``subspace_config``.

    >>> SubspaceConfig("simplex", n=4).n, SubspaceConfig("curve").n
    (4, 3)
    """

    shape: Shape = "line"
    n: int | None = None
    layerwise: bool = False
    init: VertexInit = "independent"
    noise: float = 0.0
    regularize: str | tuple[str, ...] = "matrices"

    def __post_init__(self) -> None:
        n = _VERTICES.get(self.shape, 2) if self.n is None and isinstance(self.shape, str) else self.n
        _check_shape(self.shape, n)
        object.__setattr__(self, "n", n)
        if self.init not in ("independent", "copy"):
            raise ValueError(f"init must be 'independent' or 'copy', got {self.init!r}")
        if not isinstance(self.layerwise, bool):
            raise TypeError(f"layerwise must be True or False, got {self.layerwise!r}")
        noise = self.noise
        if not isinstance(noise, numbers.Real) or isinstance(noise, bool) or not 0 <= noise < math.inf:
            raise ValueError(f"noise must be a finite number >= 0 (0 copies exactly), got {noise!r}")
        reg = self.regularize
        if reg != "matrices":
            reg = (reg,) if isinstance(reg, str) else tuple(reg) if isinstance(reg, (list, tuple)) else None
            if reg is None or not all(isinstance(p, str) for p in reg):
                raise TypeError(
                    f"regularize must be 'matrices' or a list of fnmatch patterns, got {self.regularize!r}"
                )
            object.__setattr__(self, "regularize", reg)

    def regularized(self, name: str, tensor: Tensor) -> bool:
        """Whether the regulariser includes the subspace tensor ``name``."""
        if self.regularize == "matrices":
            return tensor.dim() >= 2
        return any(fnmatch.fnmatchcase(name, p) for p in self.regularize)


def _candidate(model: nn.Module) -> Callable[[Target], str | bool]:
    uses = Counter(id(p) for m in model.modules() for p in m._parameters.values() if p is not None)

    def candidate(target: Target) -> str | bool:
        p = target.module._parameters.get(target.tensor)
        if p is None:  # parametrized by someone else: the walk says so
            return True
        if isinstance(p, nn.parameter.UninitializedParameter):
            return "lazy parameter not initialised: run one forward pass before converting"
        if not p.is_floating_point():
            return "not a floating-point tensor"
        if not p.requires_grad:
            return "frozen (requires_grad=False)"
        if uses[id(p)] > 1:
            return "tied to another module's parameter"
        return True

    return candidate


class _Vertices:
    """Draws the extra vertices of each tensor and registers its ``SubspaceParam`` (the walk's apply).

    ``independent``: from fresh base models when a factory is given (timm's own init, model-level
    init included), else from ``reset_parameters()`` on deep copies of the module; tensors neither
    reaches are copied (the report says why). ``copy``: the current tensor. Noise goes on copies.
    """

    def __init__(self, config: SubspaceConfig, factory: Callable[[], nn.Module] | None) -> None:
        self.config, self.factory = config, factory
        self.fresh: list[dict[str, Tensor]] | None = None
        self.resets: dict[nn.Module, list[nn.Module] | str] = {}

    def __call__(self, target: Target) -> str:
        tensor = target.module._parameters[target.tensor]
        extra, how = self._independent(target) if self.config.init == "independent" else (None, "copy")
        if extra is None:
            extra = [self._copy(tensor) for _ in range(self.config.n - 1)]
        param = SubspaceParam(
            self.config.shape,
            [tensor.detach(), *(e.detach().to(tensor) for e in extra)],
            regularized=self.config.regularized(target.name, tensor),
        )
        parametrize.register_parametrization(target.module, target.tensor, param)
        return f"{self.config.shape}, {param.n} vertices, {how}" + (
            ", regularized" if param.regularized else ""
        )

    def _copy(self, tensor: Tensor) -> Tensor:
        out = tensor.detach().clone()
        if self.config.noise:
            std = tensor.detach().float().std(correction=0).item()
            out.add_(torch.randn_like(out), alpha=self.config.noise * std)
        return out

    def _independent(self, target: Target) -> tuple[list[Tensor] | None, str]:
        k, shape = self.config.n - 1, target.module._parameters[target.tensor].shape
        if self.factory is not None:
            if self.fresh is None:
                self.fresh = [dict(self.factory().named_parameters()) for _ in range(k)]
            found = [f.get(target.name) for f in self.fresh]
            if any(t is None or t.shape != shape for t in found):
                return None, "copy (not in a fresh base model)"
            return found, "independent (fresh base model)"
        resets = self.resets.get(target.module)
        if resets is None:
            resets = self.resets[target.module] = self._reset_copies(target.module, k)
        if isinstance(resets, str):
            return None, f"copy ({resets})"
        return [m._parameters[target.tensor] for m in resets], "independent (reset_parameters)"

    @staticmethod
    def _reset_copies(module: nn.Module, k: int) -> list[nn.Module] | str:
        """``k`` deep copies of ``module`` re-initialised by its ``reset_parameters``, or why not."""
        if not callable(getattr(module, "reset_parameters", None)):
            return f"{type(module).__name__} has no reset_parameters"
        if parametrize.is_parametrized(module):
            return f"{type(module).__name__} is parametrized by another conversion"
        copies = [copy.deepcopy(module) for _ in range(k)]
        with torch.no_grad():
            for m in copies:
                m.reset_parameters()
        return copies


def subspace(
    model: nn.Module,
    shape: Shape = "line",
    n: int | None = None,
    *,
    layerwise: bool = False,
    init: VertexInit = "independent",
    noise: float = 0.0,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    min_params: int = 0,
    regularize: str | Sequence[str] = "matrices",
    factory: Callable[[], nn.Module] | None = None,
) -> nn.Module:
    """Make every selected float parameter of ``model`` a subspace of ``n`` vertices, in place.

    ``include``/``exclude`` are fnmatch patterns on ``module.param`` names; ``layerwise`` makes
    ``sample_point`` draw one point per module; ``regularize``: the tensors of
    ``subspace_regularizer`` ('matrices' = every tensor with >= 2 dims, or patterns); ``factory``
    makes fresh models for ``init='independent'``. ``init='copy'`` (noise 0) keeps the function.

    >>> net = subspace(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)), "curve", init="copy")
    >>> net.overparam_report.summary()
    'subspace: 4 converted, 0 skipped'
    """
    config = SubspaceConfig(shape, n, layerwise, init, noise, regularize)
    if factory is not None and not callable(factory):
        raise TypeError(f"factory must make a fresh base model when called (or be None), got {factory!r}")
    selection = Selection(include, exclude, min_params)
    vertices = _Vertices(config, factory)
    model.overparam_report = walk(model, "subspace", _candidate(model), selection, vertices, tensors=True)
    model.subspace_config = config
    return model


def _wrapped(model: nn.Module) -> bool:
    return isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) or isinstance(
        getattr(model, "_orig_mod", None), nn.Module
    )


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / ``torch.compile`` wrappers (names then match the model's).

    A plain model returns at once (this runs on every ``sample_point``); a wrapped one goes through
    accelerate's ``extract_model_from_parallel`` (DeepSpeed and FSDP too), once per layer of
    wrapping, since accelerate unwraps a ``torch.compile`` around DDP but not one inside it.
    """
    while _wrapped(model):
        from accelerate.utils import extract_model_from_parallel  # only for wrapped models: import cost

        inner = extract_model_from_parallel(model, keep_torch_compile=False)
        if inner is model:
            return model
        model = inner
    return model


def _subspace_tensors(model: nn.Module) -> dict[str, list[SubspaceParam]]:
    """The model's subspace parametrizations, grouped by the name of the module they belong to.

    Runs on every ``sample_point``: a plain recursion that skips the parametrizations' insides
    (``named_modules`` + ``is_parametrized`` costs 8x more on a model with 2000 modules).
    A wrapped model (DDP, ``torch.compile``) is unwrapped first.
    """
    model = _unwrap(model)
    groups: dict[str, list[SubspaceParam]] = {}
    seen: set[int] = set()

    def visit(name: str, module: nn.Module) -> None:
        seen.add(id(module))
        plists = module._modules.get("parametrizations")
        if plists is not None:
            params = [p[0] for p in plists.values() if isinstance(p[0], SubspaceParam)]
            if params:
                groups[name] = params
        for key, child in module._modules.items():
            if child is not None and child is not plists and id(child) not in seen:
                visit(f"{name}.{key}" if name else key, child)

    visit("", model)
    if not groups:
        raise ValueError("the model has no subspace tensors: convert it with timm_overparam.subspace()")
    return groups


def _config(model: nn.Module) -> SubspaceConfig:
    config = getattr(_unwrap(model), "subspace_config", None)
    if not isinstance(config, SubspaceConfig):
        raise ValueError("the model has no subspace_config: convert it with timm_overparam.subspace()")
    return config

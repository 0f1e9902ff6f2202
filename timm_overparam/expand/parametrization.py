"""Expand-and-project: a conv/linear weight re-parameterized as a product of factors.

``ExpandProject`` is a ``torch.nn.utils.parametrize`` parametrization: the module keeps its own
``forward`` and every reader of ``module.weight`` sees ``W_d ... W_2 W_1`` (plus residual identities
and folded batch-norm). For modules whose forward is a plain linear op on ``self.weight`` the chain
can also run in activation space (``run_chain``); ``prefers_chain`` picks the cheaper exact form
per input shape.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MethodType
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from timm_overparam.core.unparametrize import WeightList, unparametrize

Hidden = Literal["out", "min"]
Init = Literal["preserve", "original"]

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_BN_CLS = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
# Multiply-adds charged for each intermediate activation element the chain writes and reads back.
# benchmarks/train_step.py found no resnet18/vit_tiny layer whose choice depends on it (0..288):
# the multiply-add counts decide; it only tips memory-bound chains of tiny matrices.
_ELEMENT_COST = 12.0


# torch >= 2.9: is_fx_symbolic_tracing (is_fx_tracing warns there); before, is_fx_tracing is the same flag
_fx_tracing = (
    getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None)
    or torch.fx._symbolic_trace.is_fx_tracing
)


def _tracing() -> bool:
    """Under torch.export, torch.compile or torch.fx: compose in the graph, never from the eval cache."""
    return torch.compiler.is_compiling() or _fx_tracing()


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


@dataclass(frozen=True)
class Layout:
    """How a module's weight reads as a (grouped) conv/linear weight."""

    out: int
    in_per_group: int
    groups: int
    kernel: tuple[int, ...]
    experts: tuple[int, ...] = ()
    weight_shape: tuple[int, ...] = field(default=())

    @property
    def fan_in(self) -> int:
        return self.in_per_group * math.prod(self.kernel)

    @property
    def inputs(self) -> int:
        return self.in_per_group * self.groups


def layout_of(module: nn.Module) -> Layout | None:
    """The weight layout of a convertible module, or None (ConvTranspose, unknown weights)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        return None
    shape = tuple(weight.shape)
    if isinstance(module, nn.Linear):
        return Layout(shape[0], shape[1], 1, (), (), shape)
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            return None
        return Layout(shape[0], shape[1], module.groups, shape[2:], (), shape)
    ws = getattr(module, "weight_shape", None)
    if hasattr(module, "num_experts") and ws is not None and len(shape) == 2:  # timm CondConv2d
        return Layout(ws[0], ws[1], module.groups, tuple(ws[2:]), (shape[0],), shape)
    return None


def chain_capable(module: nn.Module) -> bool:
    """True when the module's forward is a plain linear op on ``self.weight`` and ``self.bias``.

    Only then may the chain run in activation space; every other module composes the weight.
    """
    cls = type(module)
    if isinstance(module, nn.Linear):
        return cls.forward is nn.Linear.forward
    for base in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if isinstance(module, base):
            return cls.forward is base.forward and cls._conv_forward is base._conv_forward
    return False


def _orthogonal_(mats: Tensor) -> None:
    """Fill a view of grouped matrices (..., r, c) with random (semi-)orthogonal blocks, in place."""
    r, c = mats.shape[-2:]
    flat = mats.reshape(-1, r, c)
    a = torch.randn(flat.shape[0], max(r, c), min(r, c))
    q, rr = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(rr, dim1=-2, dim2=-1)).unsqueeze(-2)
    if r < c:
        q = q.transpose(-2, -1)
    mats.copy_(q.reshape(mats.shape).to(mats.dtype))


def _dirac(layout: Layout, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Identity map of a node-0 input as a grouped matrix (g, in/g, in/g * prod(kernel))."""
    g, c = layout.groups, layout.in_per_group
    taps = math.prod(layout.kernel)
    centre = 0
    for k in layout.kernel:  # row-major index of the centre tap
        centre = centre * k + (k - 1) // 2
    eye = torch.zeros(g, c, c * taps, dtype=dtype, device=device)
    idx = torch.arange(c, device=device)
    eye[:, idx, idx * taps + centre] = 1
    return eye


class ExpandProject(nn.Module):
    """``weight = W_d ... W_1`` with optional batch-norm after each factor and residual links.

    Node ``x_0`` is the input, ``x_i = BN_i(W_i x_{i-1} + b_i) + sum_{n | i} x_{i-n}``; the module
    weight is the linear map ``x_0 -> x_d`` (batch-norm folded with its running statistics and its
    own eps), plus ``G`` when ``learnable_residual``. ``b_d`` is the module's own bias.

    >>> conv = nn.Conv2d(8, 8, 3)
    >>> p = ExpandProject(layout_of(conv), ExpandOptions(depth=3), has_bias=True, chain=True)
    >>> _ = torch.nn.utils.parametrize.register_parametrization(conv, "weight", p)
    >>> len(conv.parametrizations.weight[0].factors)
    3
    """

    def __init__(
        self,
        layout: Layout,
        options: ExpandOptions,
        *,
        has_bias: bool,
        chain: bool,
        kernel_sizes: Sequence[tuple[int, ...]] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        d, g = options.depth, layout.groups
        nd = len(layout.kernel)
        if kernel_sizes is None:
            kernel_sizes = [layout.kernel] + [(1,) * nd] * (d - 1)
        kernel_sizes = [tuple(k) for k in kernel_sizes]
        if len(kernel_sizes) != d:
            raise ValueError(f"kernel_sizes has {len(kernel_sizes)} entries but depth is {d}")
        composite = tuple(sum(k[i] for k in kernel_sizes) - d + 1 for i in range(nd))
        if any(len(k) != nd for k in kernel_sizes) or composite != layout.kernel:
            raise ValueError(
                f"kernel_sizes {kernel_sizes} compose to a {composite} kernel but the module's "
                f"kernel is {layout.kernel}; choose sizes with sum(k) - depth + 1 == kernel"
            )
        self.layout, self.options, self.kernel_sizes = layout, options, kernel_sizes
        self.matrix_form = all(math.prod(k) == 1 for k in kernel_sizes[1:])
        if layout.experts and not self.matrix_form:
            raise ValueError("expert (CondConv) weights support only kernel_sizes=[k, 1, ..., 1]")
        self.hidden = self._hidden_size(layout, options)
        sizes = [layout.inputs] + [self.hidden] * (d - 1) + [layout.out]
        self.sizes = sizes
        self.intervals = self._valid_intervals(options, sizes)
        self.chain_capable = chain
        # stride/padding sit on the first factor when the rest are 1x1, else on the last
        self.stride_factor = 0 if self.matrix_form else d - 1
        kw = dict(dtype=dtype, device=device)
        # factor i is parameter ``factors.<i>.weight``: timm's first_conv/classifier names can point at it
        self.factors = WeightList(
            torch.empty(*layout.experts, sizes[i + 1], sizes[i] // g, *kernel_sizes[i], **kw)
            for i in range(d)
        )
        self.biases = (
            nn.ParameterList(nn.Parameter(torch.zeros(sizes[i + 1], **kw)) for i in range(d - 1))
            if options.factor_bias and has_bias and not layout.experts
            else None
        )
        self.norms = (
            nn.ModuleList(
                _BN_CLS[nd](sizes[i + 1], eps=options.bn_eps, momentum=options.bn_momentum, **kw)
                for i in range(d)
            )
            if options.batch_norm and chain and has_bias
            else None
        )
        self.gate = (
            nn.Parameter(torch.zeros(layout.weight_shape, **kw)) if options.learnable_residual else None
        )
        self.solve_on_assign = options.init == "preserve"
        # the factor right_inverse solves: the first while every hidden size >= out, else the last
        self.solve_index = 0 if min(sizes[1:]) >= layout.out else d - 1
        self._order = self._chain_order()  # sizes are fixed: plan the product once
        self._cache: tuple[tuple, Tensor] | None = None
        self._mode: dict[tuple[int, ...], bool] = {}
        self.reset_factors()

    def __prepare_scriptable__(self) -> nn.Module:
        raise TypeError(
            "TorchScript cannot compile an expand-and-project chain (a torch.nn.utils.parametrize "
            "parametrization): script timm_overparam.collapse(model) instead, or export the training "
            "form with torch.export.export"
        )

    def slots(self, inputs_only: bool = False) -> tuple[str, ...]:
        """Names (relative to this chain) of its factors, or of the one that reads the module's input.

        timm's ``first_conv`` names the input factor (the only one with the input channels) and
        ``classifier`` every factor, so that timm's loader adapts and resets them.

        >>> expand_module(nn.Linear(4, 4), ExpandOptions(depth=2)).slots()
        ('factors.0', 'factors.1')
        """
        return ("factors.0",) if inputs_only else tuple(f"factors.{i}" for i in range(len(self.factors)))

    # ----------------------------------------------------------------------------------- setup
    @staticmethod
    def _hidden_size(layout: Layout, options: ExpandOptions) -> int:
        side = layout.out if options.hidden == "out" else min(layout.out, layout.groups * layout.fan_in)
        g = layout.groups
        return max(g, math.ceil(int(side * options.width) / g) * g)

    @staticmethod
    def _valid_intervals(options: ExpandOptions, sizes: list[int]) -> tuple[int, ...]:
        """The residual intervals whose every link joins nodes of equal size."""
        ok = []
        for n in options.intervals:
            targets = [i for i in range(n, options.depth + 1) if i % n == 0]
            if targets and all(sizes[i] == sizes[i - n] for i in targets):
                ok.append(n)
        return tuple(ok)

    def reset_factors(self) -> None:
        """Initialise the factors.

        ``init='original'``: kaiming-normal (gain 1; sqrt 2 for the last factor), factor biases
        U(+-1/sqrt(fan_in)), as the original layers. ``init='preserve'``: every factor a random
        (semi-)orthogonal block per group, so that the factor ``right_inverse`` solves for a given
        weight is well conditioned and every factor has unit singular values.
        """
        e = len(self.layout.experts)
        with torch.no_grad():
            last = len(self.factors) - 1
            for i, w in enumerate(self.factors.tensors()):
                fan_in = math.prod(w.shape[e + 1 :])
                if self.options.init == "original":
                    w.normal_(0.0, (2.0 if i == last else 1.0) ** 0.5 / math.sqrt(fan_in))
                elif i == self.solve_index and self.gate is None:
                    w.zero_()  # solved by right_inverse
                else:
                    _orthogonal_(self._grouped(w))
            if self.biases is not None and self.options.init == "original":
                for i, b in enumerate(self.biases):
                    bound = 1.0 / math.sqrt(math.prod(self.factors[i].shape[1:]))
                    b.uniform_(-bound, bound)

    # -------------------------------------------------------------------------- composition
    def _grouped(self, w: Tensor) -> Tensor:
        """A factor (*E, out, in/g, *k) as grouped matrices (*E, g, out/g, in/g * prod(k))."""
        e = w.shape[: len(self.layout.experts)]
        g = self.layout.groups
        return w.reshape(*e, g, w.shape[len(e)] // g, -1)

    def _bn_affine(self, i: int) -> tuple[Tensor, Tensor] | None:
        """Eval-mode scale and shift of the batch-norm after factor i (its own eps)."""
        if self.norms is None:
            return None
        bn = self.norms[i]
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        return scale, shift

    def _plain_product(self) -> Tensor:
        """W_d ... W_1 as grouped matrices, multiplied in the cheapest order."""
        mats = [self._grouped(w) for w in self.factors.tensors()]
        split = self._order[1]

        def product(i: int, j: int) -> Tensor:
            if i == j:
                return mats[i]
            s = split[i][j]
            return product(s + 1, j) @ product(i, s)

        return product(0, len(mats) - 1)

    def _chain_order(self) -> tuple[float, list[list[int]]]:
        """Matrix-chain order for W_d ... W_1: (multiply-adds of the product, split table)."""
        g = self.layout.groups
        dims = [self.layout.fan_in] + [s // g for s in self.sizes[1:]]
        n = len(self.factors)
        cost = [[0.0] * n for _ in range(n)]
        split = [[0] * n for _ in range(n)]
        for span in range(1, n):
            for i in range(n - span):
                j = i + span
                cost[i][j] = math.inf
                for s in range(i, j):
                    c = cost[i][s] + cost[s + 1][j] + dims[i] * dims[s + 1] * dims[j + 1]
                    if c < cost[i][j]:
                        cost[i][j], split[i][j] = c, s
        return cost[0][n - 1] * g * math.prod(self.layout.experts), split

    def _propagate(self, nodes: list[Tensor], start: int, stop: int) -> list[Tensor]:
        """Extend grouped-matrix node maps ``nodes[0..start]`` up to node ``stop``."""
        for i in range(start, stop):
            m = self._grouped(self.factors[i]) @ nodes[i]
            bn = self._bn_affine(i)
            if bn is not None:
                m = m * bn[0].reshape(self.layout.groups, -1, 1)
            for n in self.intervals:
                if (i + 1) % n == 0:
                    m = m + nodes[i + 1 - n]
            nodes.append(m)
        return nodes

    def _node_maps(self, stop: int) -> list[Tensor]:
        """Grouped-matrix maps from the input to nodes 0..stop (matrix form only)."""
        w0 = self.factors[0]
        first = self._grouped(w0)
        nodes = [_dirac(self.layout, w0.dtype, w0.device)] if self.intervals else [None]
        bn = self._bn_affine(0)
        if bn is not None:
            first = first * bn[0].reshape(self.layout.groups, -1, 1)
        if 1 in self.intervals:
            first = first + nodes[0]
        nodes.append(first)
        return self._propagate(nodes, 1, stop)

    def _kernel_chain(self) -> Tensor:
        """Composite kernel of a chain with inner kernels > 1 (full convolution of the kernels)."""
        nd, g = len(self.layout.kernel), self.layout.groups
        conv = _CONV_FN[nd]
        w0 = self.factors[0]
        ident = torch.zeros(
            self.sizes[0], self.layout.in_per_group, *([1] * nd), dtype=w0.dtype, device=w0.device
        )
        rows = torch.arange(self.sizes[0], device=w0.device)
        ident[rows, rows % self.layout.in_per_group] = 1
        nodes = [ident]
        for i, w in enumerate(self.factors.tensors()):
            if i == 0:
                m = w
            else:  # full convolution, the input channels per group playing the batch
                pad = [k - 1 for k in w.shape[2:]]
                m = conv(nodes[i].transpose(0, 1), w.flip(list(range(2, 2 + nd))), padding=pad, groups=g)
                m = m.transpose(0, 1)
            bn = self._bn_affine(i)
            if bn is not None:
                m = m * bn[0].reshape(-1, *([1] * (nd + 1)))
            for n in self.intervals:
                if (i + 1) % n == 0:
                    m = m + self._embed(nodes[i + 1 - n], i + 1 - n, i + 1, m.shape[2:])
            nodes.append(m)
        return nodes[-1]

    def _embed(self, src: Tensor, a: int, b: int, size: torch.Size) -> Tensor:
        """Place node a's kernel inside node b's kernel at the centre offset of factors a+1..b."""
        pad = []
        for dim in reversed(range(len(size))):
            left = sum((k[dim] - 1) // 2 for k in self.kernel_sizes[a:b])
            pad += [left, size[dim] - src.shape[2 + dim] - left]
        return F.pad(src, pad)

    def compose(self) -> Tensor:
        """The effective weight in the module's own shape (batch-norm folded, eval statistics)."""
        if not self.matrix_form:
            w = self._kernel_chain()
        elif not self.intervals and self.norms is None:
            w = self._plain_product()
        else:
            w = self._node_maps(self.options.depth)[-1]
        w = w.reshape(self.layout.weight_shape)
        if self.gate is not None:
            w = w + self.gate
        return w

    def compose_bias(self, last_bias: Tensor) -> Tensor:
        """Effective bias: factor biases and batch-norm shifts carried through the chain to the output."""
        g, d = self.layout.groups, len(self.factors)
        nodes: list[Tensor | None] = [None]  # node 0 (the input) carries no bias
        for i, w in enumerate(self.factors.tensors()):
            b = None
            if nodes[i] is not None:
                taps = w.flatten(2).sum(-1) if w.dim() > 2 else w
                b = (taps.reshape(g, -1, taps.shape[1]) @ nodes[i].reshape(g, -1, 1)).reshape(-1)
            own = last_bias if i == d - 1 else (self.biases[i] if self.biases is not None else None)
            if own is not None:
                b = own if b is None else b + own
            bn = self._bn_affine(i)
            if bn is not None:
                b = bn[1] if b is None else b * bn[0] + bn[1]
            for n in self.intervals:
                src = nodes[i + 1 - n] if (i + 1) % n == 0 else None
                if src is not None:
                    b = src if b is None else b + src
            nodes.append(b)
        return nodes[-1]

    def forward(self) -> Tensor:
        if self.training or torch.is_grad_enabled() or _tracing():
            return self.compose()
        key = self.state_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.compose())
        return self._cache[1]

    def state_key(self) -> tuple:
        """Identifies the current values of every tensor the composition reads (for eval caching)."""
        tensors = list(self.parameters()) + list(self.buffers())
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    # -------------------------------------------------------------------------- right inverse
    def right_inverse(self, weight: Tensor) -> tuple[()]:
        """Set the factors so that the composed weight equals ``weight`` (exactly, in float64)."""
        if self.solve_on_assign:
            with torch.no_grad():
                self.solve(weight)
        return ()

    def solve(self, weight: Tensor) -> None:
        """Solve one factor (the first, or the last for expanding layers) so the weight is ``weight``.

        Runs in float64. Residual links can make the random part of the chain singular; then the
        random factors are drawn again (a few times) before giving up.
        """
        if not self.matrix_form:
            raise ValueError(
                "a chain with inner kernels > 1 cannot be solved for a given weight; "
                "use kernel_sizes=[k, 1, ..., 1] or init='original'"
            )
        lay, d = self.layout, self.options.depth
        if (
            min(self.sizes[1:]) < lay.out
            and self.sizes[d - 1] < lay.groups * lay.fan_in
            and self.gate is None
        ):
            raise ValueError(
                f"hidden size {self.hidden} is too small to represent a {tuple(weight.shape)} "
                "weight exactly; use width >= 1 or init='original'"
            )
        dtype = self.factors[0].dtype
        target = weight.detach().to(torch.float64)
        self.to(torch.float64)
        try:
            for attempt in range(4):
                if attempt:
                    self.reset_factors()
                if self.intervals:  # keep I + W well away from singular
                    for w in self.factors.tensors():
                        w.mul_(0.5)
                self._solve_for(target)
                if not self.intervals and self.norms is None:
                    break  # a product of orthogonal factors: the solve is well conditioned
                err = (self.compose() - target).abs().max() / target.abs().max().clamp_min(1e-300)
                if err < 1e-9:
                    break
            else:
                raise ValueError(f"could not factor the weight exactly (relative error {err:.1e})")
        finally:
            self.to(dtype)
        self._cache = None

    def _solve_for(self, target: Tensor) -> None:
        lay, g = self.layout, self.layout.groups
        if self.gate is not None:
            self.gate.zero_()
            self.gate.copy_(target - self.compose())
        elif self.solve_index == 0:
            self._solve_first(target.reshape(*lay.experts, g, lay.out // g, -1))
        else:
            self._solve_last(target.reshape(*lay.experts, g, lay.out // g, -1))

    def _solve_first(self, target: Tensor) -> None:
        lay, g = self.layout, self.layout.groups
        h1 = self.sizes[1] // g
        w0 = self.factors[0]
        e = (1,) * len(lay.experts)
        eye = torch.eye(h1, dtype=w0.dtype, device=w0.device).expand(*e, g, h1, h1)
        # T: node-1 content -> output; C: what reaches the output without passing through W_1
        zeros = torch.zeros(*e, g, lay.in_per_group, h1, dtype=w0.dtype)
        transfer = self._propagate([zeros, eye], 1, len(self.factors))[-1]
        if self.intervals:
            target = target - self._propagate(self._skip_only_start(), 1, len(self.factors))[-1]
        # minimum-norm solution of transfer @ X = target (transfer has full row rank)
        gram = transfer @ transfer.transpose(-2, -1)
        pinv = transfer.transpose(-2, -1) @ torch.cholesky_inverse(torch.linalg.cholesky(gram))
        solved = pinv @ target
        bn = self._bn_affine(0)
        if bn is not None:
            solved = solved / bn[0].reshape(g, -1, 1)
        self.factors[0].copy_(solved.reshape(self.factors[0].shape))

    def _skip_only_start(self) -> list[Tensor]:
        lay = self.layout
        w0 = self.factors[0]
        node0 = _dirac(lay, w0.dtype, w0.device)
        node1 = (
            node0
            if 1 in self.intervals
            else torch.zeros(
                *(1,) * len(lay.experts),
                lay.groups,
                self.sizes[1] // lay.groups,
                node0.shape[-1],
                dtype=w0.dtype,
            )
        )
        return [node0, node1]

    def _solve_last(self, target: Tensor) -> None:
        d, g = len(self.factors), self.layout.groups
        nodes = self._node_maps(d - 1)
        skips = sum((nodes[d - n] for n in self.intervals if d % n == 0), torch.zeros_like(target))
        rhs = target - skips
        bn = self._bn_affine(d - 1)
        if bn is not None:
            rhs = rhs / bn[0].reshape(g, -1, 1)
        m = nodes[d - 1]  # full column rank: solved = rhs @ pinv(m)
        gram = m.transpose(-2, -1) @ m
        pinv = torch.cholesky_inverse(torch.linalg.cholesky(gram)) @ m.transpose(-2, -1)
        solved = rhs @ pinv
        self.factors[-1].copy_(solved.reshape(self.factors[-1].shape))

    # ---------------------------------------------------------------- activation-space chain
    def prefers_chain(self, module: nn.Module, shape: torch.Size) -> bool:
        """Whether running the chain on activations is cheaper than composing, for this input shape.

        Batch-norm inside the chain needs batch statistics, so such a chain always runs as a chain.
        """
        if self.norms is not None:
            return True
        if len(self.factors) == 1:
            return False
        key = tuple(shape)
        choice = self._mode.get(key)
        if choice is None:
            choice = self._mode[key] = self._chain_cost(module, key) < self._composed_cost(module, key)
        return choice

    def _positions(self, module: nn.Module, shape: tuple[int, ...]) -> int:
        """Number of output positions (batch x spatial) for an input of this shape."""
        nd = len(self.layout.kernel)
        if nd == 0:
            return math.prod(shape[:-1])
        batch = shape[0] if len(shape) == nd + 2 else 1
        pads = module._reversed_padding_repeated_twice
        n = batch
        for k in range(nd):
            size = shape[-nd + k]
            total = pads[2 * (nd - 1 - k)] + pads[2 * (nd - 1 - k) + 1]
            span = module.dilation[k] * (self.layout.kernel[k] - 1)
            n *= (size + total - span - 1) // module.stride[k] + 1
        return n

    def _composed_cost(self, module: nn.Module, shape: tuple[int, ...]) -> float:
        n = self._positions(module, shape)
        return 3.0 * (self._order[0] + n * self.layout.out * self.layout.fan_in)

    def _chain_cost(self, module: nn.Module, shape: tuple[int, ...]) -> float:
        n, g, s = self._positions(module, shape), self.layout.groups, self.sizes
        macs = s[1] * self.layout.fan_in + sum(s[i + 1] * s[i] // g for i in range(1, len(s) - 1))
        return 3.0 * n * macs + _ELEMENT_COST * n * sum(s[1:-1])

    def run_chain(self, module: nn.Module, x: Tensor) -> Tensor:
        """Run the factors on activations: same output and gradients as the composed weight."""
        d, nd = len(self.factors), len(self.layout.kernel)
        last_bias = (
            module.parametrizations.bias.original
            if parametrize.is_parametrized(module, "bias")
            else module.bias
        )
        inp = x
        first_pad = 0
        if nd:
            conv = _CONV_FN[nd]
            pads = module._reversed_padding_repeated_twice
            explicit = (
                module.padding_mode != "zeros"
                or isinstance(module.padding, str)
                or not self.matrix_form
                or bool(self.intervals)  # node 0 feeds a residual link: keep it padded
            )
            if not explicit:
                first_pad = module.padding
            elif any(pads):
                mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
                inp = F.pad(x, pads, mode=mode)
        nodes = [inp]
        for i, w in enumerate(self.factors.tensors()):
            b = last_bias if i == d - 1 else (self.biases[i] if self.biases is not None else None)
            if nd == 0:
                y = F.linear(nodes[i], w, b)
            else:
                stride = module.stride if i == self.stride_factor else 1
                pad = first_pad if i == 0 else 0
                y = conv(nodes[i], w, b, stride, pad, module.dilation, self.layout.groups)
            if self.norms is not None:
                y = (
                    self.norms[i](y.reshape(-1, y.shape[-1])).reshape(y.shape)
                    if nd == 0
                    else self.norms[i](y)
                )
            for n in self.intervals:
                if (i + 1) % n == 0:
                    y = y + self._crop(module, nodes[i + 1 - n], i + 1 - n, i + 1, y.shape)
            nodes.append(y)
        out = nodes[-1]
        if self.gate is not None:
            out = out + (F.linear(x, self.gate) if nd == 0 else module._conv_forward(x, self.gate, None))
        return out

    def _crop(self, module: nn.Module, src: Tensor, a: int, b: int, shape: torch.Size) -> Tensor:
        """The positions of node a that the (centre tap of) factors a+1..b read for node b."""
        nd = len(self.layout.kernel)
        if nd == 0:
            return src
        scale, off = [1] * nd, [0] * nd
        for i in range(b - 1, a - 1, -1):  # back from node b to node a through factor i
            stride = module.stride if i == self.stride_factor else (1,) * nd
            for k in range(nd):
                off[k] = stride[k] * off[k] + module.dilation[k] * ((self.kernel_sizes[i][k] - 1) // 2)
                scale[k] *= stride[k]
        index = tuple(
            slice(off[k], off[k] + scale[k] * (shape[-nd + k] - 1) + 1, scale[k]) for k in range(nd)
        )
        return src[(..., *index)]


class ExpandProjectBias(nn.Module):
    """Bias parametrization paired with an ``ExpandProject``: the module's own bias is ``b_d``.

    Registered only when factor biases or batch-norm shifts reach the output.
    """

    def __init__(self, chain: ExpandProject) -> None:
        super().__init__()
        object.__setattr__(self, "chain", chain)  # a reference, not a second registration
        self._cache: tuple[tuple, Tensor] | None = None

    def forward(self, last_bias: Tensor) -> Tensor:
        if self.training or torch.is_grad_enabled() or _tracing():
            return self.chain.compose_bias(last_bias)
        key = (last_bias.data_ptr(), last_bias._version, *self.chain.state_key())
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.chain.compose_bias(last_bias))
        return self._cache[1]

    def right_inverse(self, bias: Tensor) -> Tensor:
        """The ``b_d`` that makes the effective bias equal ``bias`` (the map is affine in ``b_d``)."""
        if not self.chain.solve_on_assign:
            return bias
        with torch.no_grad():
            offset = self.chain.compose_bias(torch.zeros_like(bias))
            bn = self.chain._bn_affine(len(self.chain.factors) - 1)
            return (bias - offset) / bn[0] if bn is not None else bias - offset


def _expanded_forward(module: nn.Module, x: Tensor) -> Tensor:
    """Forward of a chain-capable module: the activation chain where cheaper in training."""
    chain = module.parametrizations.weight[0]
    if module.training and chain.prefers_chain(module, x.shape):
        return chain.run_chain(module, x)
    return type(module).forward(module, x)


def expand_module(
    module: nn.Module,
    options: ExpandOptions,
    kernel_sizes: Sequence[int | Sequence[int]] | None = None,
) -> ExpandProject:
    """Re-parameterize ``module.weight`` (and its bias where the chain reaches it) in place.

    >>> conv = nn.Conv2d(4, 4, 3, padding=1)
    >>> chain = expand_module(conv, ExpandOptions(depth=3))
    >>> tuple(conv.weight.shape), len(chain.factors)
    ((4, 4, 3, 3), 3)
    """
    layout = layout_of(module)
    if layout is None:
        raise TypeError(
            f"{type(module).__name__} has no conv/linear weight to expand; "
            "convert nn.Linear, nn.Conv1d/2d/3d (and subclasses) or timm CondConv2d"
        )
    if kernel_sizes is not None:
        nd = len(layout.kernel)
        kernel_sizes = [(k,) * nd if isinstance(k, int) else tuple(k) for k in kernel_sizes]
    weight = module.weight
    has_bias = getattr(module, "bias", None) is not None
    chain = ExpandProject(
        layout,
        options,
        has_bias=has_bias,
        chain=chain_capable(module),
        kernel_sizes=kernel_sizes,
        dtype=weight.dtype,
        device=weight.device,
    )
    for p in chain.parameters():
        p.requires_grad_(weight.requires_grad)
    parametrize.register_parametrization(module, "weight", chain, unsafe=True)  # shapes checked here
    if has_bias and (chain.biases is not None or chain.norms is not None):
        parametrize.register_parametrization(module, "bias", ExpandProjectBias(chain))
    chain.solve_on_assign = chain.matrix_form
    if chain.chain_capable:
        module.forward = MethodType(_expanded_forward, module)
    module.reparameterize = MethodType(collapse_module, module)
    return chain


def collapse_module(module: nn.Module) -> None:
    """Replace the parametrized weight (and bias) by their current effective values, in place.

    Batch-norm inside the chain folds with its running statistics. Attached to every expanded
    module as ``reparameterize()``, so ``timm.utils.reparameterize_model`` collapses it too.
    """
    chain = module.parametrizations.weight[0]
    chain.eval()
    # the bias parametrization reads the weight's chain: bias first
    names = [n for n in ("bias", "weight") if parametrize.is_parametrized(module, n)]
    unparametrize(module, names, requires_grad=chain.factors[0].requires_grad)
    for attr in ("forward", "reparameterize"):
        module.__dict__.pop(attr, None)

"""``ExpandProject``: a conv/linear weight re-parameterized as a product of factors.

``ExpandProject`` is a ``torch.nn.utils.parametrize`` parametrization that holds the factors, factor
biases, batch-norms and learnable-residual gate, and calls the pure functions of ``compose``
(weight, bias), ``solve`` (exact start), ``cost`` (chain or composed) and ``chain`` (activations).
Every reader of ``module.weight`` sees ``W_d ... W_2 W_1`` (plus residual identities and folded
batch-norm). ``expand_module`` registers it and adopts the host (see ``layout`` for the contract);
``collapse_module`` leaves the effective tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from timm_overparam.core.unparametrize import WeightList, unparametrize
from timm_overparam.expand import chain as _chain
from timm_overparam.expand import cost as _cost
from timm_overparam.expand.compose import (
    Affine,
    Plan,
    bn_affine,
    compose_bias,
    compose_weight,
    grouped,
    plan_chain,
)
from timm_overparam.expand.layout import Layout, adopt, chain_capable, layout_of, release
from timm_overparam.expand.options import ExpandOptions
from timm_overparam.expand.solve import check_solvable, solve_factor, solve_index

__all__ = ["ExpandOptions", "ExpandProject", "ExpandProjectBias", "collapse_module", "expand_module"]

_BN_CLS = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}

# torch >= 2.9: is_fx_symbolic_tracing (is_fx_tracing warns there); before, is_fx_tracing is the same flag
_fx_tracing = (
    getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None)
    or torch.fx._symbolic_trace.is_fx_tracing
)


# torch 2.4 to 2.14 (private): not None while a torch.func transform (vmap, grad, ...) is active
_peek_interpreter_stack = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)


def _tracing() -> bool:
    """Under torch.export, torch.compile, torch.fx or a torch.func transform: compose, never use the eval cache.

    The cache key reads ``data_ptr()``, which functorch's batched (vmap) and wrapped tensors do not
    have; a torch without ``torch._C._functorch.peek_interpreter_stack`` skips that check.
    """
    return (
        torch.compiler.is_compiling()
        or _fx_tracing()
        or (_peek_interpreter_stack is not None and _peek_interpreter_stack() is not None)
    )


def _orthogonal_(mats: Tensor) -> None:
    """Fill a view of grouped matrices (..., r, c) with random (semi-)orthogonal blocks, in place."""
    r, c = mats.shape[-2:]
    flat = mats.reshape(-1, r, c)
    q, rr = torch.linalg.qr(torch.randn(flat.shape[0], max(r, c), min(r, c)))
    q = q * torch.sign(torch.diagonal(rr, dim1=-2, dim2=-1)).unsqueeze(-2)
    if r < c:
        q = q.transpose(-2, -1)
    mats.copy_(q.reshape(mats.shape).to(mats.dtype))


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
        self.plan: Plan = plan_chain(layout, options, kernel_sizes)
        self.options, self.chain_capable = options, chain
        sizes, d, kw = self.plan.sizes, options.depth, dict(dtype=dtype, device=device)
        # factor i is parameter ``factors.<i>.weight``: timm's first_conv/classifier names can point at it
        self.factors = WeightList(
            torch.empty(*layout.experts, sizes[i + 1], sizes[i] // layout.groups, *self.kernel_sizes[i], **kw)
            for i in range(d)
        )
        self.biases = (
            nn.ParameterList(nn.Parameter(torch.zeros(sizes[i + 1], **kw)) for i in range(d - 1))
            if options.factor_bias and has_bias and not layout.experts
            else None
        )
        bn = _BN_CLS[len(layout.kernel)]
        self.norms = (
            nn.ModuleList(
                bn(sizes[i + 1], eps=options.bn_eps, momentum=options.bn_momentum, **kw) for i in range(d)
            )
            if options.batch_norm and chain and has_bias
            else None
        )
        self.gate = (
            nn.Parameter(torch.zeros(layout.weight_shape, **kw)) if options.learnable_residual else None
        )
        self.solve_on_assign = options.init == "preserve"
        self._cache: tuple[tuple, Tensor] | None = None
        self._mode: dict[tuple[int, ...], bool] = {}  # input shape -> chain form (cost model's choice)
        self.reset_factors()

    def __prepare_scriptable__(self) -> nn.Module:
        raise TypeError(
            "TorchScript cannot compile an expand-and-project chain (a torch.nn.utils.parametrize "
            "parametrization): script timm_overparam.collapse(model) instead, or export the training "
            "form with torch.export.export"
        )

    # ------------------------------------------------------------ the chain's structure (its plan)
    @property
    def layout(self) -> Layout:
        """The host's ``Layout`` record, taken at expansion."""
        return self.plan.layout

    @property
    def sizes(self) -> list[int]:
        """Node sizes, from the input ``x_0`` to the output ``x_d``."""
        return list(self.plan.sizes)

    @property
    def hidden(self) -> int:
        """Hidden node size."""
        return self.plan.hidden

    @property
    def kernel_sizes(self) -> list[tuple[int, ...]]:
        """Kernel of each factor."""
        return list(self.plan.kernel_sizes)

    @property
    def intervals(self) -> tuple[int, ...]:
        """The residual intervals in use (those whose links join nodes of equal size)."""
        return self.plan.intervals

    @property
    def matrix_form(self) -> bool:
        """True when every factor after the first is 1x1."""
        return self.plan.matrix_form

    @property
    def solve_index(self) -> int:
        """The factor that ``solve`` sets."""
        return solve_index(self.plan)

    def slots(self, inputs_only: bool = False) -> tuple[str, ...]:
        """Names (relative to this chain) of its factors, or of the one that reads the module's input.

        timm's ``first_conv`` names the input factor (the only one with the input channels) and
        ``classifier`` every factor, so that timm's loader adapts and resets them.

        >>> expand_module(nn.Linear(4, 4), ExpandOptions(depth=2)).slots()
        ('factors.0', 'factors.1')
        """
        return ("factors.0",) if inputs_only else tuple(f"factors.{i}" for i in range(len(self.factors)))

    def reset_factors(self) -> None:
        """Initialise the factors.

        ``init='original'``: kaiming-normal (gain 1; sqrt 2 for the last factor), factor biases
        U(+-1/sqrt(fan_in)), as the original layers. ``init='preserve'``: every factor a random
        (semi-)orthogonal block per group, so that the factor ``right_inverse`` solves for a given
        weight is well conditioned and every factor has unit singular values.
        """
        e, last = len(self.layout.experts), len(self.factors) - 1
        with torch.no_grad():
            for i, w in enumerate(self.factors.tensors()):
                if self.options.init == "original":
                    fan_in = math.prod(w.shape[e + 1 :])
                    w.normal_(0.0, (2.0 if i == last else 1.0) ** 0.5 / math.sqrt(fan_in))
                elif i == self.solve_index and self.gate is None:
                    w.zero_()  # solved by right_inverse
                else:
                    _orthogonal_(grouped(w, self.layout))
            if self.biases is not None and self.options.init == "original":
                for i, b in enumerate(self.biases):
                    bound = 1.0 / math.sqrt(math.prod(self.factors[i].shape[1:]))
                    b.uniform_(-bound, bound)

    # ------------------------------------------------------------------------------- composition
    def affines(self) -> list[Affine] | None:
        """Eval-mode (scale, shift) of the batch-norm after each factor, or None without batch-norm."""
        return None if self.norms is None else [bn_affine(bn) for bn in self.norms]

    def _scales(self) -> list[Tensor] | None:
        affines = self.affines()
        return None if affines is None else [scale for scale, _ in affines]

    def compose(self) -> Tensor:
        """The effective weight in the module's own shape (batch-norm folded, eval statistics)."""
        return compose_weight(self.plan, self.factors.tensors(), self._scales(), self.gate)

    def compose_bias(self, last_bias: Tensor) -> Tensor:
        """Effective bias: factor biases and batch-norm shifts carried through the chain to the output."""
        biases = None if self.biases is None else list(self.biases)
        return compose_bias(self.plan, self.factors.tensors(), biases, self.affines(), last_bias)

    def forward(self) -> Tensor:
        if self.training or torch.is_grad_enabled() or _tracing():
            return self.compose()
        key = self.state_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.compose())
        return self._cache[1]

    def train(self, mode: bool = True) -> ExpandProject:
        """Set the mode, and drop the eval cache: ``state_key`` cannot see a write through another
        tensor that shares a factor's memory (DeepSpeed ZeRO points every parameter into flat buffers,
        ``p.data = view``, and updates those), so each ``train()``/``eval()`` starts a fresh cache."""
        self._cache = None
        return super().train(mode)

    def state_key(self) -> tuple:
        """Identifies the current values of every tensor the composition reads (for eval caching)."""
        tensors = list(self.parameters()) + list(self.buffers())
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    # ----------------------------------------------------------------------------- right inverse
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
        check_solvable(self.plan, weight.shape, gated=self.gate is not None)
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
                if self.gate is not None:
                    self.gate.zero_()
                    self.gate.copy_(target - self.compose())
                else:
                    solved = solve_factor(self.plan, self.factors.tensors(), self._scales(), target)
                    self.factors[self.solve_index].copy_(solved)
                if (not self.intervals and self.norms is None) or target.is_meta:
                    break  # orthogonal factors: a well-conditioned solve; meta tensors: no values to check
                err = (self.compose() - target).abs().max() / target.abs().max().clamp_min(1e-300)
                if err < 1e-9:
                    break
            else:
                raise ValueError(f"could not factor the weight exactly (relative error {err:.1e})")
        finally:
            self.to(dtype)
        self._cache = None

    # -------------------------------------------------------------------- activation-space chain
    def prefers_chain(self, shape: torch.Size) -> bool:
        """Whether running the chain on activations is cheaper than composing, for this input shape.

        Batch-norm inside the chain needs batch statistics, so such a chain always runs as a chain.
        The host's geometry was recorded in ``plan.layout`` at expansion. The choice is cached per
        shape, except while torch.compile traces: reading a cache that the trace fills would guard on
        its contents and recompile at the next call; the cost model is plain arithmetic on the shape.
        """
        if self.norms is not None:
            return True
        key = tuple(shape)
        if torch.compiler.is_compiling():
            return _cost.prefers_chain(self.plan, key)
        choice = self._mode.get(key)
        if choice is None:
            choice = self._mode[key] = _cost.prefers_chain(self.plan, key)
        return choice

    def run_chain(self, module: nn.Module, x: Tensor) -> Tensor:
        """Run the factors on activations: same output and gradients as the composed weight."""
        last_bias = (
            module.parametrizations.bias.original
            if parametrize.is_parametrized(module, "bias")
            else module.bias
        )
        biases = None if self.biases is None else list(self.biases)
        return _chain.run_chain(
            self.plan, x, self.factors.tensors(), biases, self.norms, self.gate, last_bias
        )


class ExpandProjectBias(nn.Module):
    """Bias parametrization paired with an ``ExpandProject``: the module's own bias is ``b_d``.

    Registered only when factor biases or batch-norm shifts reach the output.

    >>> lin = nn.Linear(3, 3)
    >>> chain = expand_module(lin, ExpandOptions(depth=2, factor_bias=True))
    >>> type(lin.parametrizations.bias[0]).__name__
    'ExpandProjectBias'
    """

    def __init__(self, chain: ExpandProject) -> None:
        super().__init__()
        object.__setattr__(self, "chain", chain)  # a reference, not a second registration
        self._cache: tuple[tuple, Tensor] | None = None

    def train(self, mode: bool = True) -> ExpandProjectBias:
        """Set the mode and drop the eval cache (as ``ExpandProject.train``)."""
        self._cache = None
        return super().train(mode)

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
            affines = self.chain.affines()
            return (bias - offset) / affines[-1][0] if affines is not None else bias - offset


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
    adopt(module, chain.chain_capable, collapse_module)
    return chain


def collapse_module(module: nn.Module) -> None:
    """Replace the parametrized weight (and bias) by their current effective values, in place.

    Batch-norm inside the chain folds with its running statistics. Every expanded module has it as
    its ``reparameterize()`` method, so ``timm.utils.reparameterize_model`` collapses it too.

    >>> lin = nn.Linear(3, 3)
    >>> _ = expand_module(lin, ExpandOptions(depth=2)); collapse_module(lin); type(lin) is nn.Linear
    True
    """
    chain = module.parametrizations.weight[0]
    chain.eval()
    # the bias parametrization reads the weight's chain: bias first
    names = [n for n in ("bias", "weight") if parametrize.is_parametrized(module, n)]
    unparametrize(module, names, requires_grad=chain.factors[0].requires_grad)
    if parametrize.is_parametrized(module):  # other parametrizations keep the module's own class
        release(module)

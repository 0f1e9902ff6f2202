"""The standalone layers behave like their torch.nn counterparts, with the original's options."""

import pytest
import torch
from conftest import randomize_norm_stats, rel_err

from timm_overparam import OverparamConv1d, OverparamConv2d, OverparamLinear, collapse_module


@pytest.mark.parametrize(
    "make,x",
    [
        (lambda: OverparamConv2d(4, 4, kernel_sizes=[5, 3, 1], padding=3), torch.randn(2, 4, 9, 11)),
        (
            lambda: OverparamConv2d(4, 4, [(3, 1), (1, 3), (1, 1)], stride=2, padding=1, residual=True),
            torch.randn(2, 4, 9, 11),
        ),
        (
            lambda: OverparamConv2d(4, 4, 3, padding=1, depth=2, batch_norm=True, residual=True),
            torch.randn(2, 4, 9, 11),
        ),
        (
            lambda: OverparamConv1d(4, 4, [3, 3, 3], padding=3, dilation=2, batch_norm=True),
            torch.randn(2, 4, 17),
        ),
        (
            lambda: OverparamLinear(4, 4, depth=4, batch_norm=True, residual=True, residual_intervals=[2, 3]),
            None,
        ),
        (lambda: OverparamLinear(4, 6, depth=3, width=2, learnable_residual=True), None),
    ],
)
def test_standalone_layer_is_its_collapsed_layer(make, x):
    layer = make().double()
    x = (torch.randn(5, 3, 4) if x is None else x).double()
    assert layer.train() is layer and layer.eval() is layer
    randomize_norm_stats(layer)
    weight, bias = layer.weight.clone(), layer.bias.clone()
    chain = layer.parametrizations.weight[0]
    expanded = chain.run_chain(layer, x)  # the chain on activations, eval-mode batch-norm
    assert rel_err(layer(x), expanded) <= 1e-10
    collapse_module(layer)
    assert type(layer) in (OverparamConv1d, OverparamConv2d, OverparamLinear)
    assert not hasattr(layer, "parametrizations") and "forward" not in vars(layer)
    assert torch.equal(layer.weight, weight) and torch.equal(layer.bias, bias)
    assert rel_err(layer(x), expanded) <= 1e-10


def test_original_defaults():
    layer = OverparamConv2d(2, 4, kernel_sizes=[5, 3, 1], padding=3)
    assert layer.kernel_size == (7, 7)
    chain = layer.parametrizations.weight[0]
    assert [tuple(w.shape) for w in chain.factors] == [(4, 2, 5, 5), (4, 4, 3, 3), (4, 4, 1, 1)]
    assert len(chain.biases) == 2  # every factor has a bias; the last is the layer's own
    assert OverparamConv2d(3, 8, 3, depth=4).parametrizations.weight[0].sizes == [3, 8, 8, 8, 8]
    assert tuple(OverparamLinear(3, 5, width=2).parametrizations.weight[0].factors[0].shape) == (10, 3)


def test_bad_standalone_input():
    with pytest.raises(ValueError, match="residual=True needs in == out, got 2 -> 4"):
        OverparamConv2d(2, 4, 3, residual=True)
    with pytest.raises(ValueError, match=r"residual_intervals \[1\] need equal sizes"):
        OverparamLinear(4, 4, width=2, residual=True, residual_intervals=1)
    with pytest.raises(ValueError, match="batch_norm=True needs bias=True"):
        OverparamLinear(4, 4, bias=False, batch_norm=True)
    with pytest.raises(ValueError, match="has 2 entries but depth=3"):
        OverparamConv2d(2, 2, [3, 3], depth=3)
    with pytest.raises(ValueError, match="depth must be an integer >= 1, got 0"):
        OverparamConv2d(2, 2, 3, depth=0)

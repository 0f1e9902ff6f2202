"""Public API guards: invalid options, collapse of subspace models, converting converted models, exports."""

import math

import pytest
import timm
import torch
from conftest import rel_err
from torch import nn
from torch.nn.utils import parametrize

import timm_overparam as top


def _parametrized(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]


@pytest.mark.parametrize("width", [math.nan, math.inf, -math.inf])
def test_non_finite_width_is_an_error_not_a_silent_no_op(width):
    # nan used to skip every layer (a report of skips, no error); inf raised a raw OverflowError
    with pytest.raises(ValueError, match=f"width must be a finite number > 0 .*, got {width!r}"):
        top.overparameterize(nn.Sequential(nn.Linear(4, 4)), width=width)
    with pytest.raises(ValueError, match=f"got {width!r}"):
        timm.create_model("test_resnet_op2", op_width=width)


def test_bad_selection_options():
    with pytest.raises(ValueError, match="min_params must be an integer >= 0, got True"):
        top.overparameterize(nn.Linear(2, 2), min_params=True)
    with pytest.raises(TypeError, match="include must be a list of fnmatch patterns, got 3"):
        top.overparameterize(nn.Linear(2, 2), include=3)
    with pytest.raises(ValueError, match=r"types must be a subset of \['conv', 'linear'\], got 5"):
        top.overparameterize(nn.Linear(2, 2), types=5)


def test_collapse_of_a_subspace_model_says_to_extract_a_point():
    model = timm.create_model("test_resnet_line", num_classes=3)
    with pytest.raises(
        ValueError, match=r"'conv1.0.weight' is a subspace tensor: .*extract_point\(model, point\)"
    ):
        top.collapse(model)
    with pytest.raises(ValueError, match="is a subspace tensor"):
        top.collapse(model, inplace=True)
    assert model.pretrained_cfg["architecture"] == "test_resnet_line"  # left as it was
    assert hasattr(model, "overparam_report") and _parametrized(model)


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (
            "op",
            "op",
            r"cannot convert to op: 'conv1.0.weight' is already an expand-and-project chain .*timm_overparam.collapse\(model\)",
        ),
        (
            "op",
            "subspace",
            r"cannot convert to subspace: 'conv1.0.weight' is already an expand-and-project chain",
        ),
        (
            "line",
            "op",
            r"cannot convert to op: 'conv1.0.weight' is already a subspace tensor .*timm_overparam.extract_point\(model, point\)",
        ),
        ("line", "subspace", r"cannot convert to subspace: 'conv1.0.weight' is already a subspace tensor"),
    ],
)
def test_converting_a_converted_model_is_refused(first, second, message):
    model = timm.create_model("test_resnet_op2" if first == "op" else "test_resnet_line", num_classes=3)
    report, state = model.overparam_report, {k: v.clone() for k, v in model.state_dict().items()}
    convert = top.overparameterize if second == "op" else top.subspace
    with pytest.raises(ValueError, match=message):
        convert(model)
    assert model.overparam_report is report  # nothing changed
    assert model.state_dict().keys() == state.keys()


def test_converting_the_exported_model_again_works_and_exports_stock():
    model = timm.create_model("test_resnet_op2", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    again = top.subspace(top.collapse(model), "line", init="copy")  # the supported way to stack
    assert again.overparam_report.base == "test_resnet"
    again.eval()
    with torch.no_grad():
        assert rel_err(again(x), model(x)) <= 1e-5
        plain = top.extract_point(again, 0.7)
        assert not _parametrized(plain) and plain.pretrained_cfg["architecture"] == "test_resnet"
        assert rel_err(plain(x), model(x)) <= 1e-5
    timm.create_model("test_resnet", num_classes=3).load_state_dict(plain.state_dict(), strict=True)


def test_user_parametrizations_are_still_skipped_not_refused():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    parametrize.register_parametrization(net[0], "weight", nn.Identity())
    top.overparameterize(net)
    assert net.overparam_report.skipped == {"0": "already parametrized"}
    assert list(net.overparam_report.converted) == ["1"]


def test_load_weights_is_public_beside_save_weights(tmp_path):
    assert {"save_weights", "load_weights"} <= set(top.__all__)
    model = timm.create_model("test_resnet_op2", num_classes=3)
    file = top.save_weights(model, tmp_path / "op.safetensors", parametrized=True)
    other = timm.create_model("test_resnet_op2", num_classes=3)
    top.load_weights(other, file)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in other.state_dict().items())


def test_package_names_do_not_hide_the_api():
    import types

    import timm_overparam as top

    # the subpackage timm_overparam.subspace must not shadow the function of the same name
    assert callable(top.subspace) and not isinstance(top.subspace, types.ModuleType)
    from timm_overparam.subspace import subspace

    assert subspace is top.subspace

"""Registry, whole-model conversion, pretrained start, collapse and export to stock timm."""

import subprocess
import sys

import pytest
import timm
import torch
from conftest import randomize_norm_stats, rel_err
from torch import nn

import timm_overparam
from timm_overparam import collapse, overparameterize, save_weights


def test_every_architecture_has_op_variants():
    derived = set(timm.list_models(module="op")) | set(timm.list_models(module="subspace"))
    base = [m for m in timm.list_models() if m not in derived]
    for suffix in ("op2", "op3", "op4"):
        assert len(timm.list_models(f"*_{suffix}")) == len(base)
    assert "resnet18_op3" in timm.list_models(module="op")


def test_create_model_options_and_cfg():
    m = timm.create_model(
        "convnext_atto_op2", op_width=2, op_batch_norm=True, op_residual=True, num_classes=3
    )
    assert m.pretrained_cfg["architecture"] == "convnext_atto_op2"
    report = m.overparam_report
    assert report.base == "convnext_atto"
    assert any("batch_norm" in d and "residual [2]" in d for d in report.converted.values())
    cfg = timm.models.get_pretrained_cfg("resnet50_op3")
    assert cfg.hf_hub_id is None and cfg.input_size == (3, 224, 224)
    assert timm.list_models("resnet50_op3", pretrained=True) == []


def test_bad_registry_input():
    with pytest.raises(TypeError, match="unknown option op_dpeth=3; valid options: op_depth"):
        timm.create_model("resnet18_op3", op_dpeth=3)
    with pytest.raises(ValueError, match="depth must be an integer >= 1, got 0"):
        timm.create_model("resnet18_op3", op_depth=0)
    with pytest.raises(ValueError, match="unknown timm architecture 'resnet_nope'"):
        timm_overparam.register_architecture("resnet_nope", timm_overparam.models.op.FAMILY)
    with pytest.raises(ValueError, match="types must be a subset"):
        overparameterize(nn.Linear(2, 2), types=["embedding"])


def test_pretrained_start_and_export_load_without_the_plugin(tmp_path):
    base = timm.create_model("resnet18", num_classes=7)
    randomize_norm_stats(base)
    base.eval()
    base_file = save_weights(base, tmp_path / "resnet18.safetensors")
    model = timm.create_model(
        "resnet18_op3",
        pretrained=True,
        num_classes=7,
        pretrained_cfg_overlay=dict(file=str(base_file), num_classes=7),
    )
    model.eval()
    x = torch.randn(2, 3, 33, 31)
    with torch.no_grad():
        assert rel_err(model(x), base(x)) <= 1e-5
    # fine-tune one step, then export
    model.train()
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(0.1 * p.grad)
    model.eval()
    plain = collapse(model)
    assert type(plain.conv1) is nn.Conv2d and plain.pretrained_cfg["architecture"] == "resnet18"
    exported = save_weights(plain, tmp_path / "collapsed.safetensors")
    with torch.no_grad():
        expected = model(x)
    torch.save({"x": x, "y": expected}, tmp_path / "io.pt")
    script = (
        "import sys, torch, timm\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        f"m = timm.create_model('resnet18', pretrained=True, num_classes=7, "
        f"pretrained_cfg_overlay=dict(file={str(exported)!r}, num_classes=7)).eval()\n"
        "assert 'timm_overparam' not in sys.modules\n"
        "err = ((m(io['x']) - io['y']).abs().max() / io['y'].abs().max()).item()\n"
        "print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(out.stdout) <= 1e-5


def test_timm_reparameterize_model_collapses():
    model = timm.create_model("resnet18_op2", num_classes=4).eval()
    x = torch.randn(1, 3, 32, 32)
    plain = timm.utils.reparameterize_model(model)
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())
    with torch.no_grad():
        assert rel_err(plain(x), model(x)) <= 1e-5
    stock = timm.create_model("resnet18", num_classes=4)
    stock.load_state_dict(plain.state_dict(), strict=True)


def test_any_torch_model_include_exclude_and_report():
    net = nn.Sequential()
    net.add_module("stem", nn.Conv2d(3, 8, 3))
    net.add_module("up", nn.ConvTranspose2d(8, 8, 2))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("head", nn.Linear(8, 2))
    net.add_module("tiny", nn.Linear(2, 2))
    net.add_module("lazy", nn.LazyLinear(2))
    overparameterize(net, depth=3, include=["*"], exclude=["head*"], min_params=10)
    report = net.overparam_report
    assert list(report.converted) == ["stem"]
    assert report.skipped == {
        "up": "transposed convolutions are not expanded",
        "head": "excluded by pattern 'head*'",
        "tiny": "6 parameters < min_params=10",
        "lazy": "lazy module not initialised: run one forward pass before converting",
    }
    assert "stem: depth 3" in str(report)


def test_residual_goes_only_where_shapes_allow():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, stride=2))
    ref = timm_overparam.collapse(overparameterize(nn.Sequential(), depth=2))  # empty model works too
    assert isinstance(ref, nn.Sequential)
    overparameterize(net, depth=2, residual=True)
    details = net.overparam_report.converted
    assert "no residual (shapes)" in details["0"] and "residual [2]" in details["1"]


def tiny_user_net(pretrained: bool = False, **kwargs) -> nn.Module:
    """A user architecture registered with timm after the plugin was imported."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))


def test_architectures_registered_later_can_be_added():
    timm.models.register_model(tiny_user_net)
    names = timm_overparam.register_architecture("tiny_user_net", timm_overparam.models.op.FAMILY)
    assert names == ["tiny_user_net_op2", "tiny_user_net_op3", "tiny_user_net_op4"]
    assert timm_overparam.register_architecture("tiny_user_net", timm_overparam.models.op.FAMILY) == names
    # both families, so that every base model keeps having variants of each (test_subspace checks it)
    subspace_names = timm_overparam.register_architecture(
        "tiny_user_net", timm_overparam.models.subspace.FAMILY
    )
    assert subspace_names == ["tiny_user_net_line", "tiny_user_net_curve", "tiny_user_net_simplex"]
    model = timm.create_model("tiny_user_net_op3")
    assert list(model.overparam_report.converted) == ["0"]
    assert "lazy module not initialised" in model.overparam_report.skipped["2"]

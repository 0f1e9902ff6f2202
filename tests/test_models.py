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


def tiny_late_net(pretrained: bool = False, **kwargs) -> nn.Module:
    """A user architecture registered with timm after the import, derived by one call."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def tiny_decorated_net(pretrained: bool = False, **kwargs) -> nn.Module:
    """A user architecture registered with the plugin's register_model decorator."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


EVERY_SUFFIX = ["op2", "op3", "op4", "line", "curve", "simplex"]


def test_one_call_gives_models_registered_after_import_every_familys_names():
    timm.models.register_model(tiny_late_net)
    assert not timm.is_model("tiny_late_net_op2")  # timm has no hook: nothing happens by itself
    new = timm_overparam.register_new_models()
    assert new == [f"tiny_late_net_{s}" for s in EVERY_SUFFIX]
    assert timm_overparam.register_new_models() == []
    assert timm_overparam.register_architecture("tiny_late_net") == new  # both families, a no-op now
    model = timm.create_model("tiny_late_net_line", subspace_init="copy")
    x = torch.randn(2, 3, 8, 8)
    assert model(x).shape == (2, 2) and model.pretrained_cfg["architecture"] == "tiny_late_net_line"

    timm_overparam.registry.register_model(tiny_decorated_net)
    assert all(timm.is_model(f"tiny_decorated_net_{s}") for s in EVERY_SUFFIX)
    assert (
        timm.create_model("tiny_decorated_net_op2").pretrained_cfg["architecture"] == "tiny_decorated_net_op2"
    )


def test_register_architecture_names_bad_input():
    with pytest.raises(ValueError, match="'resnet18_op2' is a name this plugin derived; register its base"):
        timm_overparam.register_architecture("resnet18_op2")
    with pytest.raises(TypeError, match=r"family must be a timm_overparam\.registry\.Family .* got 'op'"):
        timm_overparam.register_architecture("resnet18", "op")


def test_a_model_registered_before_the_import_is_derived(tmp_path):
    script = (
        "import timm, torch\n"
        "from timm.models import register_model\n"
        "@register_model\n"
        "def early_net(pretrained=False, **kwargs):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))\n"
        "import timm_overparam\n"
        "print(sorted(timm.list_models('early_net_*')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(sorted(f"early_net_{s}" for s in EVERY_SUFFIX))


# ------------------------------------------------------------------ derived cfgs and pretrained loads
DERIVED_NAMES = [
    "resnet18_op3",
    "resnet50_op2",
    "convnext_atto_op2",
    "efficientnet_b0_op2",
    "vit_tiny_patch16_224_op3",
    "vit_tiny_patch16_224_line",
    "mobilenetv3_small_100_line",
    "resnet18_curve",
    "deit_tiny_patch16_224_simplex",
    "regnetx_002_op4",
]


def _as_tuple(names):
    return (names,) if isinstance(names, str) else tuple(names)


def _check_default_cfg(model: nn.Module) -> None:
    """timm's test_model_default_cfgs name checks: every first_conv/classifier ``.weight`` is in the state_dict."""
    state_dict, cfg = model.state_dict(), model.default_cfg
    if cfg.get("num_classes", None):
        for c in _as_tuple(cfg["classifier"]):
            assert c + ".weight" in state_dict.keys(), f"{c} not in model params"
    first_conv = cfg["first_conv"]
    assert isinstance(_as_tuple(first_conv), (tuple, list))
    for fc in _as_tuple(first_conv):
        assert fc + ".weight" in state_dict.keys(), f"{fc} not in model params"


@pytest.mark.parametrize("name", DERIVED_NAMES)
def test_derived_default_cfgs_name_tensors_of_the_derived_state_dict(name):
    model = timm.create_model(name, pretrained=False).eval()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    _check_default_cfg(model)
    cfg = model.default_cfg
    assert ".parametrizations.weight.0." in _as_tuple(cfg["first_conv"])[0]
    traits = getattr(timm.models, "get_model_traits", None)  # timm >= 1.0.31; older loaders read the cfg
    if traits is not None:
        assert traits(model)["first_conv"] == cfg["first_conv"]  # what timm's loader reads
    registered = timm.models.get_pretrained_cfg(name)  # the registered cfg says the same
    assert (registered.first_conv, registered.classifier) == (cfg["first_conv"], cfg["classifier"])
    if not cfg.get("fixed_input_size"):  # forward checks of timm's test, at a small input
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            pre = model.forward_head(model.forward_features(x), pre_logits=True)
            assert pre.shape == (1, model.head_hidden_size)
            model.reset_classifier(0)
            assert model(x).shape == pre.shape
    base = name.rsplit("_", 1)[0]
    point = [1 / 3] * 3 if name.endswith("_simplex") else 0.5
    plain = collapse(model) if "_op" in name else timm_overparam.extract_point(model, point)
    stock_cfg = timm.create_model(base, pretrained=False).default_cfg
    assert (plain.default_cfg["first_conv"], plain.default_cfg["classifier"]) == (
        stock_cfg["first_conv"],
        stock_cfg["classifier"],
    )
    if traits is not None:
        assert traits(plain)["first_conv"] == stock_cfg["first_conv"]


def test_options_that_leave_the_stem_alone_keep_its_name():
    model = timm.create_model("test_resnet_op2", op_exclude=["conv1.*"], num_classes=3)
    assert model.default_cfg["first_conv"] == "conv1.0"
    assert model.default_cfg["classifier"] == (
        "fc.parametrizations.weight.0.factors.0",
        "fc.parametrizations.weight.0.factors.1",
    )
    _check_default_cfg(model)


def _base_file(tmp_path, num_classes: int = 7):
    base = timm.create_model("test_resnet", num_classes=num_classes)
    randomize_norm_stats(base)
    return base.eval(), save_weights(base, tmp_path / "test_resnet.safetensors")


@pytest.mark.parametrize("name", ["test_resnet_op3", "test_resnet_line"])
def test_base_checkpoint_into_derived_model_with_other_classes_and_channels(tmp_path, name):
    base, file = _base_file(tmp_path)
    kwargs = dict(
        pretrained=True, num_classes=5, in_chans=1, pretrained_cfg_overlay=dict(file=str(file), num_classes=7)
    )
    model = (
        timm.create_model(name, subspace_init="copy", **kwargs)
        if "line" in name
        else timm.create_model(name, **kwargs)
    )
    stock = timm.create_model("test_resnet", **kwargs)  # timm's own classifier reset and input adaptation
    torch.testing.assert_close(stock.conv1[0].weight, base.conv1[0].weight.sum(1, keepdim=True))
    assert model.conv1[0].in_channels == 1 and model.fc.out_features == 5
    x = torch.randn(2, 1, 32, 32)
    model.eval(), stock.eval()
    with torch.no_grad():
        assert rel_err(model.forward_features(x), stock.forward_features(x)) <= 1e-5
        assert rel_err(model.forward_features(x), base.forward_features(x.expand(-1, 3, -1, -1))) <= 1e-5


def _trained_derived(name: str, tmp_path, **kwargs):
    model = timm.create_model(name, num_classes=7, **kwargs)
    randomize_norm_stats(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    file = save_weights(model, tmp_path / f"{name}.safetensors", parametrized=True)
    return model.eval(), file


@pytest.mark.parametrize("name", ["test_resnet_op3", "test_resnet_line"])
def test_derived_checkpoint_loads_with_classifier_reset_and_input_adaptation(tmp_path, name):
    saved, file = _trained_derived(name, tmp_path)
    state = saved.state_dict()
    overlay = dict(file=str(file), num_classes=7)
    same = timm.create_model(name, pretrained=True, num_classes=7, pretrained_cfg_overlay=overlay)
    assert same.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in same.state_dict().items())

    other = timm.create_model(name, pretrained=True, num_classes=5, pretrained_cfg_overlay=overlay).eval()
    assert other.fc.out_features == 5
    loaded = other.state_dict()
    head = [k for k in loaded if k.startswith("fc.")]
    assert head and all(loaded[k].shape != state[k].shape for k in head)  # the classifier was reset
    for k, v in loaded.items():
        if not k.startswith("fc."):
            assert torch.equal(v, state[k]), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(other.forward_features(x), saved.forward_features(x)) <= 1e-6
    if "_op" in name:  # an expanded stem's hidden size depends on its input channels
        with pytest.raises(ValueError, match="only subspace checkpoints adapt to another in_chans"):
            timm.create_model(name, pretrained=True, in_chans=1, pretrained_cfg_overlay=overlay)
        return
    gray = timm.create_model(
        name, pretrained=True, num_classes=5, in_chans=1, pretrained_cfg_overlay=overlay
    ).eval()
    for i in range(2):
        key = f"conv1.0.parametrizations.weight.0.vertices.{i}.weight"
        torch.testing.assert_close(gray.state_dict()[key], state[key].sum(1, keepdim=True))
    x1 = torch.randn(2, 1, 32, 32)
    with torch.no_grad(), timm_overparam.at_point(gray, 0.3), timm_overparam.at_point(saved, 0.3):
        assert rel_err(gray.forward_features(x1), saved.forward_features(x1.expand(-1, 3, -1, -1))) <= 1e-5

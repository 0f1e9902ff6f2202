"""TorchScript, FX and torch.export: the exported stock models compile; the training form exports or says why not."""

import warnings

import pytest
import timm
import torch
from conftest import randomize_norm_stats, rel_err

import timm_overparam as top

# (derived name, create_model kwargs, how to get the stock model)
CASES = [
    ("test_resnet_op3", {}, top.collapse),
    ("test_vit_op3", {"img_size": 32}, top.collapse),
    ("test_resnet_line", {}, lambda m: top.extract_point(m, 0.3)),  # the model is moved to 0.3 too
]


def _script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated: legacy users still script stock models
        return torch.jit.script(module)


@pytest.mark.parametrize(("name", "kwargs", "export"), CASES, ids=[c[0] for c in CASES])
def test_exported_stock_models_script_and_torch_export(name, kwargs, export):
    model = timm.create_model(name, num_classes=4, **kwargs)
    randomize_norm_stats(model)
    model.eval()
    if name.endswith("_line"):
        top.set_point(model, 0.3)
    plain = export(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert rel_err(plain(x), expected) <= 1e-5
        assert rel_err(_script(plain)(x), expected) <= 1e-5
        program = torch.export.export(plain, (x,))
        assert not any("parametrizations" in k for k in program.state_dict)  # the stock tensors
        assert rel_err(program.module()(x), expected) <= 1e-5
        if "resnet" in name:  # timm's ViT does not trace with plain torch.fx (not this plugin's doing)
            assert rel_err(_script(torch.fx.symbolic_trace(plain))(x), expected) <= 1e-5


@pytest.mark.parametrize(
    ("name", "fix"),
    [("test_resnet_op3", "timm_overparam.collapse"), ("test_resnet_line", "timm_overparam.extract_point")],
)
def test_training_form_exports_with_torch_export_and_refuses_torchscript_clearly(name, fix):
    model = timm.create_model(name, num_classes=4)
    randomize_norm_stats(model)
    x = torch.randn(4, 3, 32, 32)
    with pytest.raises(TypeError, match=f"TorchScript cannot compile .* script {fix}\\("):
        _script(model.eval())
    with pytest.raises(TypeError, match="TorchScript cannot compile"):  # FX keeps the parametrizations
        _script(torch.fx.symbolic_trace(model))
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        assert rel_err(program.module()(x), model(x)) <= 1e-5
        model.train()  # batch statistics, and the activation chain where the cost model picks it
        program = torch.export.export(model, (x,))
        assert rel_err(program.module()(x), model(x)) <= 1e-5

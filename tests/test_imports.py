"""Import cost: ``import timm_overparam`` loads torch, timm and safetensors, not the trainer's extras."""

import subprocess
import sys

HEAVY = ("accelerate", "torchmetrics", "matplotlib", "sklearn", "wandb")


def _loaded(code: str) -> list[str]:
    script = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_import_leaves_the_heavy_dependencies_out():
    # timm itself imports wandb when it is installed (timm.utils.summary tries it), so wandb is
    # checked against plain `import timm`: the plugin adds none of these
    timm_only = _loaded("import timm")
    assert set(timm_only) <= {"wandb"}
    assert _loaded("import timm_overparam") == timm_only


def test_heavy_names_load_their_dependencies_when_used():
    names = (
        "import timm_overparam as top\n"
        "assert top.plot_points.__module__ == 'timm_overparam.eval.plots'\n"
        "from timm_overparam.subspace import extract_point, subspace_regularizer\n"
    )
    assert set(_loaded(names)) <= {"wandb"}  # resolving the names loads nothing heavy
    evaluate = (
        "import torch\n"
        "top.evaluate_model(torch.nn.Linear(3, 3), [(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))])"
    )
    assert "torchmetrics" in _loaded(names + evaluate)  # the ECE's library, when first computed

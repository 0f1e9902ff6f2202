"""Import cost: ``import timm_overparam`` loads torch, timm and safetensors, not the trainer's extras."""

import subprocess
import sys

HEAVY = ("accelerate", "torchmetrics", "matplotlib", "sklearn", "wandb")


def _loaded(*steps: str) -> list[set[str]]:
    """Run ``steps`` one after another in one fresh interpreter: the heavy modules loaded after each."""
    show = f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules), flush=True)"
    script = "\n".join(["import sys", *(f"{step}\n{show}" for step in steps)])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return [set(line.split()) for line in out.stdout.splitlines()]


def test_import_leaves_the_heavy_dependencies_out():
    # timm itself imports wandb when it is installed (timm.utils.summary tries it), so wandb is
    # checked against plain `import timm`: the plugin adds none of these
    timm_only, plugin = _loaded("import timm", "import timm_overparam")
    assert timm_only <= {"wandb"}
    assert plugin == timm_only


def test_heavy_names_load_their_dependencies_when_used():
    names = (
        "import timm_overparam as top\n"
        "assert top.plot_points.__module__ == 'timm_overparam.eval.plots'\n"
        "from timm_overparam.subspace import extract_point, subspace_regularizer"
    )
    evaluate = (
        "import torch\n"
        "top.evaluate_model(torch.nn.Linear(3, 3), [(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))])"
    )
    resolved, evaluated = _loaded(names, evaluate)
    assert resolved <= {"wandb"}  # resolving the names loads nothing heavy
    assert "torchmetrics" in evaluated  # the ECE's library, when first computed

"""Block weights, weight paths, blocks files, and the path-norm / path-weights command line."""

import math
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from timm_overparam.research import block_weights, load_blocks, save_blocks, weights_path
from timm_overparam.research.paths import main, norm_curves, path_pvariations, weight_entries

# ---------------------------------------------------------------------------------------------
# block_weights / weights_path


def test_block_weights_from_the_method_or_a_blocks_list():
    m = timm.create_model("depth_limit_resnet", L=3, dim=2, input_size=4)
    w = block_weights(m)
    assert w.shape == (3, 2, 2) and not w.requires_grad
    assert torch.equal(w[1], m.blocks[1].weight)
    net = nn.Module()
    net.blocks = nn.ModuleList(nn.Linear(3, 3, bias=False) for _ in range(4))
    assert torch.equal(block_weights(net)[2], net.blocks[2].weight)


def test_block_weights_says_what_a_model_needs():
    with pytest.raises(ValueError, match=r"CifarResNet has no residual blocks.*block_weights\(\)"):
        block_weights(timm.create_model("cifar_resnet56"))
    vit = timm.create_model("test_vit", num_classes=2)
    with pytest.raises(ValueError, match=r"VisionTransformer.blocks\[0\] \(Block\) has no .weight"):
        block_weights(vit)
    mixed = nn.Module()
    mixed.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(3, 2)])
    with pytest.raises(ValueError, match=r"blocks\[1\].weight has shape \[2, 3\]"):
        block_weights(mixed)
    with pytest.raises(TypeError, match="takes a model"):
        block_weights(torch.zeros(2, 2, 2))


def test_weights_path_scales_by_L_to_the_beta():
    w = torch.arange(12.0).reshape(3, 2, 2)
    path = weights_path(w, beta=0.5)
    assert path.shape == (3, 4)
    assert torch.allclose(path, math.sqrt(3) * w.reshape(3, 4))
    m = timm.create_model("depth_limit_resnet", L=4, dim=2, input_size=1, init="constant")
    assert torch.allclose(weights_path(m, 0.75), 4**0.75 * m.init_value * torch.ones(4, 4))
    with pytest.raises(ValueError, match="beta must be a finite number"):
        weights_path(w, float("nan"))
    with pytest.raises(ValueError, match=r"\(L, dim, dim\) tensor with L >= 1"):
        weights_path(torch.zeros(3), 1.0)


# ---------------------------------------------------------------------------------------------
# files


def test_save_and_load_blocks(tmp_path):
    m = timm.create_model("depth_limit_resnet", L=5, dim=3, input_size=2)
    path = save_blocks(m, tmp_path / "run" / "blocks.safetensors")
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == ["blocks.safetensors"]
    assert torch.equal(load_blocks(path), m.block_weights())
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        assert list(f.keys()) == ["blocks"]
        assert f.metadata()["architecture"] == "depth_limit_resnet" and f.metadata()["shape"] == "5x3x3"
    save_blocks(torch.ones(2, 2, 2), path)  # a tensor, over the old file
    assert torch.equal(load_blocks(path), torch.ones(2, 2, 2))


def test_blocks_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_blocks(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_blocks(tmp_path / "junk.safetensors")
    save_file({"weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"has no tensor 'blocks' \(keys: \['weight'\]\)"):
        load_blocks(tmp_path / "other.safetensors")
    with torch.device("meta"):
        meta = timm.create_model("depth_limit_resnet", L=2, dim=2)
    with pytest.raises(ValueError, match="meta device"):
        save_blocks(meta, tmp_path / "meta.safetensors")
    assert not (tmp_path / "meta.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# paths: numbers and the command line


def _runs(root):
    """Two runs of L = 4 (constant 0.5 and 1.0), one of L = 8 (constant 0.25), dim 2."""
    save_blocks(torch.full((4, 2, 2), 0.5), root / "a" / "blocks.safetensors")
    save_blocks(torch.full((4, 2, 2), 1.0), root / "b" / "seed1" / "blocks.safetensors")
    save_blocks(torch.full((8, 2, 2), 0.25), root / "c" / "blocks.safetensors")


def test_norm_curves_by_hand(tmp_path):
    _runs(tmp_path)
    files = sorted(tmp_path.rglob("blocks.safetensors"))
    curves = norm_curves(files, beta=0.5)
    assert list(curves) == [4, 8]
    c4, c8 = curves[4], curves[8]
    # |L^beta W_k|_F = sqrt(L) * c * dim: L = 4: 2 * 0.5 * 2 = 2 and 2 * 1 * 2 = 4; L = 8: sqrt(8) * 0.5
    assert c4.x.tolist() == [0.25, 0.5, 0.75, 1.0] and c4.norms.tolist() == [[2.0] * 4, [4.0] * 4]
    assert c4.mean.tolist() == [3.0] * 4
    # 95% t interval of the mean of (2, 4): t(0.975, 1) * std / sqrt(2), std = sqrt(2): 12.7062
    assert c4.high[0] - 3.0 == pytest.approx(12.7062047, rel=1e-6) and c4.low[0] == pytest.approx(
        3 - 12.7062047
    )
    assert c8.mean[0] == pytest.approx(math.sqrt(8) * 0.5) and c8.low is None and c8.dim == (2, 2)


def test_norm_command(tmp_path, capsys):
    _runs(tmp_path / "runs")
    out = tmp_path / "fig" / "norm.png"
    assert main(["norm", str(tmp_path / "runs"), "--beta", "0.5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 runs under" in text
    assert "L=4: 2 runs, blocks 2x2; first 3, last 3" in text
    assert "L=8: 1 run, blocks 2x2; first 1.414" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {out}" in text
    assert sorted(p.name for p in out.parent.iterdir()) == ["norm.png"]  # no temporary file left


def test_norm_command_prints_rooted_p_variations(tmp_path, capsys):
    # one 1x1 run of L = 4: W = 0, 1, 0, 1 -> path sqrt(4) * W = 0, 2, 0, 2: p = 2 sum 4 + 4 + 4 = 12
    save_blocks(torch.tensor([0.0, 1.0, 0.0, 1.0]).reshape(4, 1, 1), tmp_path / "r1" / "blocks.safetensors")
    save_blocks(torch.zeros(4, 1, 1), tmp_path / "r2" / "blocks.safetensors")
    assert path_pvariations(sorted(tmp_path.rglob("*.safetensors")), 0.5, 2) == {4: [math.sqrt(12), 0.0]}
    png = tmp_path / "n.png"
    main(["norm", str(tmp_path), "--beta", "0.5", "--pvar", "2", "--out", str(png)])
    text = capsys.readouterr().out
    assert "L=4: mean 1.732, max 3.464 over 2 runs (3.464, 0)" in text and png.is_file()
    main(
        [
            "norm",
            str(tmp_path),
            "--beta",
            "0.5",
            "--pvar",
            "2",
            "--pvar-only",
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    text = capsys.readouterr().out
    assert "L=4: max 3.464 over 2 runs" in text and "wrote" not in text
    assert not (tmp_path / "x.png").exists()


def test_weights_command_and_entries(tmp_path, capsys):
    w = torch.arange(16.0).reshape(4, 2, 2)  # W_k[i, j] = 4 (k - 1) + 2 i + j
    save_blocks(w, tmp_path / "run" / "blocks.safetensors")
    x, ys = weight_entries(w, [(0, 0), (1, 0)], beta=0.5)
    assert x.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert ys[(1, 0)].tolist() == [4.0, 12.0, 20.0, 28.0]  # 2 * (4 (k - 1) + 2)
    out = tmp_path / "w.png"
    assert (
        main(
            ["weights", str(tmp_path / "run"), "--entries", "0,0", "1,0", "--beta", "0.5", "--out", str(out)]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "L=4, blocks 2x2" in text and "[1, 0]: first 4, last 28, min 4, max 28" in text
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["weights", "{run}", "--entries", "2,0"],
            r"entry 2,0 is outside the 2 x 2 block weights: i must be in 0..1",
        ),
        (["weights", "{run}", "--entries", "0;0"], r"an entry is 'i,j'"),
        (["weights", "{root}"], r"2 blocks.safetensors files under .*give one run folder or one file"),
        (["norm", "{root}", "--pvar-only"], r"--pvar-only needs --pvar P"),
        (["norm", "{empty}"], r"no blocks.safetensors under"),
        (["norm", "{root}", "--beta", "inf"], r"--beta must be a finite number"),
    ],
)
def test_command_errors_exit_2_with_a_message(tmp_path, capsys, argv, message):
    save_blocks(torch.zeros(4, 2, 2), tmp_path / "root" / "run" / "blocks.safetensors")
    save_blocks(torch.zeros(4, 2, 2), tmp_path / "root" / "run2" / "blocks.safetensors")
    (tmp_path / "empty").mkdir()
    places = {"run": tmp_path / "root" / "run", "root": tmp_path / "root", "empty": tmp_path / "empty"}
    with pytest.raises(SystemExit) as e:
        main([a.format(**places) for a in argv])
    assert e.value.code == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def test_module_runs_as_a_command(tmp_path):
    save_blocks(torch.zeros(3, 2, 2), tmp_path / "run" / "blocks.safetensors")
    cmd = [
        sys.executable,
        "-m",
        "timm_overparam.research.paths",
        "norm",
        str(tmp_path),
        "--pvar",
        "2",
        "--pvar-only",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "L=3: max 0 over 1 run" in out

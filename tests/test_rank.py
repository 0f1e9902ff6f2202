"""Effective rank (Huh et al. 2021; Roy & Vetterli 2007): hand-computed matrices, embeddings, runs."""

import json
import math

import pytest
import timm
import torch
from test_train import FAST, rows, run
from torch import nn

from timm_overparam.eval.rank import EffectiveRank, effective_rank, embedding_rank, embeddings
from timm_overparam.train.cli import parse_args, validate_parser
from timm_overparam.train.validation import validate


def orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q


def test_identity_has_full_effective_rank():
    r = effective_rank(torch.eye(5, dtype=torch.float64))
    assert r.erank == pytest.approx(5.0, rel=1e-12)
    assert r.entropy == pytest.approx(math.log(5), rel=1e-12)  # five equal singular values: p_i = 1/5


def test_rank_one_has_effective_rank_one():
    u, v = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, -1.0, 0.5, 2.0])
    r = effective_rank(torch.outer(u, v))
    assert r.entropy == pytest.approx(0.0, abs=1e-9)  # one singular value: p = (1), 0 log 0 = 0 for the rest
    assert r.erank == pytest.approx(1.0, abs=1e-9)


def test_diag_3_1_by_hand():
    r = effective_rank(torch.diag(torch.tensor([3.0, 1.0])))
    # p = (3/4, 1/4): entropy = -(3/4 ln 3/4 + 1/4 ln 1/4) = ln 4 - (3/4) ln 3 = 0.562335...
    assert r.entropy == pytest.approx(math.log(4) - 0.75 * math.log(3), rel=1e-12)
    assert r.entropy == pytest.approx(0.5623351446, abs=1e-9)
    assert r.erank == pytest.approx(4 / 3**0.75, rel=1e-12)  # exp(entropy) = 4 / 3^(3/4) = 1.75476...
    assert r == EffectiveRank(entropy=r.entropy, erank=math.exp(r.entropy))


def test_invariant_to_rotations_and_scale():
    a = torch.zeros(6, 4, dtype=torch.float64)
    a[:3, :3] = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    # singular values 3, 2, 1: p = (1/2, 1/3, 1/6)
    expected = -(0.5 * math.log(0.5) + math.log(1 / 3) / 3 + math.log(1 / 6) / 6)
    for m in (a, orthogonal(6, 0) @ a @ orthogonal(4, 1), 7.5 * a, -0.01 * (orthogonal(6, 2) @ a)):
        assert effective_rank(m).entropy == pytest.approx(expected, rel=1e-10)


def test_rectangular_both_ways():
    wide = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])  # singular values 2, 2
    assert effective_rank(wide).erank == pytest.approx(2.0, rel=1e-12)
    assert effective_rank(wide.T).erank == pytest.approx(2.0, rel=1e-12)
    tall = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])  # as diag(3, 1)
    assert effective_rank(tall).erank == pytest.approx(4 / 3**0.75, rel=1e-12)


def test_float32_and_integer_input_are_computed_in_float64():
    assert effective_rank(torch.eye(3, dtype=torch.float32)).erank == pytest.approx(3.0, rel=1e-12)
    assert effective_rank(torch.tensor([[3, 0], [0, 1]])).entropy == pytest.approx(
        math.log(4) - 0.75 * math.log(3), rel=1e-12
    )


@pytest.mark.parametrize(
    "matrix, message",
    [
        (torch.zeros(3, 2), r"the matrix \(3, 2\) is zero"),
        (torch.zeros(0, 4), r"the matrix \(0, 4\) is zero \(or empty\)"),
        (torch.ones(3), r"needs a 2-D tensor \(rows x columns\), got \(3,\)"),
        (torch.ones(2, 2, 2), r"got \(2, 2, 2\)"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "non-finite values"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "non-finite values"),
        ([[1.0, 0.0], [0.0, 1.0]], "got list"),
    ],
)
def test_bad_matrices(matrix, message):
    with pytest.raises(ValueError, match=message):
        effective_rank(matrix)


def _loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(4, 3, 32, 32, generator=g), torch.zeros(4, dtype=torch.long)) for _ in range(3)]


def test_embeddings_of_a_timm_model_in_eval_mode_with_modes_restored():
    model = timm.create_model("resnet18", num_classes=10)
    model.train()
    model.layer1.eval()
    out = embeddings(model, _loader())
    assert out.shape == (12, 512) and out.device == next(model.parameters()).device
    assert model.training and model.layer2.training and not model.layer1.training
    model.eval()
    with torch.no_grad():  # eval-mode BatchNorm: the pooled features the fc layer sees
        expected = torch.cat([model.global_pool(model.forward_features(x)) for x, _ in _loader()])
    torch.testing.assert_close(out, expected)
    doubled = embeddings(model, _loader(), gather=lambda t: torch.cat([t, t]))  # each batch "gathered"
    assert doubled.shape == (24, 512)
    assert embedding_rank(model, _loader()).erank <= 12  # at most min(N, D) = 12


def test_embeddings_need_a_timm_model():
    with pytest.raises(TypeError, match="Sequential has no forward_features/forward_head"):
        embeddings(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)), _loader())


def test_a_run_with_log_rank_records_erank_everywhere(tmp_path):
    res = run(tmp_path, *FAST, "--epochs", "1", "--log-rank", "--eval-metric", "erank", "--experiment", "r")
    summary = rows(tmp_path / "r")
    assert {"eval_erank", "eval_rank_entropy"} <= set(summary[0])
    final = res["final"]
    assert 1 <= final["erank"] <= 96  # test_resnet's embeddings have 96 features
    assert final["erank"] == pytest.approx(math.exp(final["rank_entropy"]), rel=1e-12)
    assert float(summary[0]["eval_erank"]) == pytest.approx(final["erank"], rel=1e-12)
    assert json.loads((tmp_path / "r" / "results.json").read_text())["final"]["erank"] == final["erank"]
    assert res["eval_metric"] == "erank" and res["best_metric"] == final["erank"]  # it picks `best`
    # validate.py on the stock export reports the same rank as the run's (collapsed) evaluation
    record = validate(
        parse_args(
            validate_parser(),
            [
                "--model",
                "test_resnet",
                "--checkpoint",
                str(tmp_path / "r" / "collapsed.safetensors"),
                "--log-rank",
            ],
        )
    )
    assert record["erank"] == pytest.approx(final["erank"], rel=1e-6)


def test_a_line_run_ranks_each_point_with_its_batchnorm_statistics(tmp_path):
    res = run(
        tmp_path,
        *FAST[2:],
        "--model",
        "test_resnet_line",
        "--epochs",
        "1",
        "--eval-points",
        "0,0.5,1",
        "--eval-ensembles",
        "0+1",
        "--bn-recal-batches",
        "3",
        "--log-rank",
        "--experiment",
        "line",
    )
    final = res["final"]
    points = ("0", "0.5", "1")
    for key in ("erank", "rank_entropy"):
        assert final[key] == pytest.approx(sum(final[f"point{p}_{key}"] for p in points) / 3, rel=1e-12)
    assert not [k for k in final if k.startswith("ens") and "rank" in k]  # ensembles have no embeddings
    record = validate(
        parse_args(
            validate_parser(),
            [
                "--model",
                "test_resnet",
                "--checkpoint",
                str(tmp_path / "line" / "point-0.5.safetensors"),
                "--log-rank",
            ],
        )
    )
    assert record["erank"] == pytest.approx(final["point0.5_erank"], rel=1e-6)  # the point's own statistics

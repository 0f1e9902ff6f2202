"""Evaluation of subspace points and ensembles: metrics against hand computations, restoring, plots;
reliability bins and the run record's bins and time per step."""

import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from test_train import FAST, rows, run
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import multiclass_calibration_error

import timm_overparam as top
from timm_overparam.eval import Reliability, reliability


def _train_batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(4, 3, 16, 16, generator=g) * 2 + 1, torch.zeros(4, dtype=torch.long)) for _ in range(n)
    ]


def _eval_loader() -> DataLoader:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(20, 3, 16, 16, generator=g), torch.randint(0, 3, (20,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _small_cnn(shape: str = "line", n: int | None = None) -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    return top.subspace(net, shape, n)


def _hand(plain: nn.Module) -> torch.Tensor:
    """Logits of an extracted model recalibrated with update_bn on the first two training batches."""
    update_bn(_train_batches()[:2], plain)
    plain.eval()
    with torch.no_grad():
        return torch.cat([plain(x) for x, _ in _eval_loader()])


def _targets() -> torch.Tensor:
    return torch.cat([y for _, y in _eval_loader()])


def _expected(probs: torch.Tensor, log_probs: torch.Tensor) -> dict[str, float]:
    y = _targets()
    return {
        "top1": (probs.argmax(1) == y).double().mean().item(),
        "top5": 1.0,  # 3 classes
        "loss": F.nll_loss(log_probs, y).item(),
        "ece": multiclass_calibration_error(probs, y, 3, n_bins=20, norm="l1").item(),
    }


def _assert_metrics(metrics: top.Metrics, expected: dict[str, float]) -> None:
    for key, value in expected.items():
        assert getattr(metrics, key) == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_a_point_equals_the_extracted_model_with_recalibrated_bn():
    model = timm.create_model("resnet10t_line", num_classes=3)
    res = top.evaluate_points(model, _eval_loader(), [0.25, 0.75], bn_loader=_train_batches(), bn_batches=2)
    for point, metrics in zip([0.25, 0.75], res.metrics, strict=True):
        logits = _hand(top.extract_point(model, point))
        _assert_metrics(metrics, _expected(logits.softmax(1), logits.log_softmax(1)))
    assert res.points == [0.25, 0.75] and res.num_samples == 20
    assert res.metrics[0] != res.metrics[1]


@pytest.mark.parametrize("average", ["logits", "probs"])
def test_an_ensemble_averages_its_members_each_with_its_own_statistics(average: str):
    model = _small_cnn()
    res = top.evaluate_points(
        model,
        _eval_loader(),
        [0, 0.5, 1],
        [[0, 1], [0.5]],
        bn_loader=_train_batches(),
        bn_batches=2,
        average=average,
    )
    a, b = (_hand(top.extract_point(model, p)) for p in (0, 1))
    if average == "logits":
        mean = (a + b) / 2
        expected = _expected(mean.softmax(1), mean.log_softmax(1))
    else:
        probs = (a.softmax(1) + b.softmax(1)) / 2
        expected = _expected(probs, probs.log())
    _assert_metrics(res.ensemble_metrics[0], expected)
    assert res.ensemble_metrics[1] == res.metrics[1]  # a one-member ensemble is its point
    assert res.ensembles == [(0.0, 1.0), (0.5,)] and res.average == average


def test_loss_and_ece_of_a_perfectly_calibrated_toy_model():
    """Every sample gets probabilities (1/2, 1/4, 1/4); half the targets are class 0: confidence = accuracy."""
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([math.log(2.0), 0.0, 0.0]))
    model = top.subspace(lin, init="copy")
    loader = [(torch.randn(4, 2), torch.tensor([0, 0, 1, 2]))]
    (metrics,) = top.evaluate_points(model, loader, [0.5]).metrics
    assert metrics.top1 == 0.5 and metrics.top5 == 1.0
    assert metrics.loss == pytest.approx(1.5 * math.log(2.0), rel=1e-6)
    assert metrics.ece == pytest.approx(0.0, abs=1e-6)


def test_tv_distance_is_zero_for_a_point_with_itself_and_symmetric():
    model = _small_cnn()
    res = top.evaluate_points(
        model, _eval_loader(), [0, 1], bn_loader=_train_batches(), tv_pairs=[(0, 0), (0, 1), (1, 0)]
    )
    assert res.tv[0] == 0.0 and res.tv[1] == res.tv[2] > 0
    p, q = (top.extract_point(model, a) for a in (0, 1))
    update_bn(_train_batches(), p)
    update_bn(_train_batches(), q)
    p.eval()
    q.eval()
    with torch.no_grad():
        x = torch.cat([x for x, _ in _eval_loader()])
        expected = 0.5 * (p(x).softmax(1) - q(x).softmax(1)).abs().sum(1).mean()
    assert res.tv[1] == pytest.approx(expected.item(), rel=1e-5)
    assert res.tv_pairs == [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0)]
    assert json.loads(json.dumps(res.to_dict()))["tv"][1] == {"a": 0.0, "b": 1.0, "tv": res.tv[1]}


def test_point_bn_statistics_and_training_flags_are_restored():
    model = _small_cnn()
    top.set_point(model, 0.3)
    update_bn(_train_batches()[2:], model)
    model.train()
    model[1].eval()
    stats = top.current_bn_stats(model)
    weight = model[0].weight.clone()
    top.evaluate_points(model, _eval_loader(), [0, 1], [[0, 1]], bn_loader=_train_batches())
    assert torch.equal(model[0].weight, weight)
    for key, value in top.current_bn_stats(model).items():
        assert torch.equal(value, stats[key]), key
    assert model.training and not model[1].training and model[0].training


def test_plots_are_pngs_saved_atomically(tmp_path):
    model = _small_cnn()
    res = top.evaluate_points(model, _eval_loader(), [0, 0.5, 1], [[0, 1]], bn_loader=_train_batches())
    path = top.plot_points(res, tmp_path / "line.png")
    simplex = _small_cnn("simplex", 3)
    points = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1 / 3, 1 / 3, 1 / 3)]
    res = top.evaluate_points(simplex, _eval_loader(), points, [points[:2]], bn_loader=_train_batches())
    top.plot_points(res, tmp_path / "simplex.png")
    assert path == str(tmp_path / "line.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line.png", "simplex.png"]
    for name in ("line.png", "simplex.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ensembles": [[0, 0.3]]}, "ensemble member 0.3"),
        ({"tv_pairs": [(1, 0.7)]}, "TV point 0.7"),
        ({"points": [0, 1.5]}, "1.5"),
        ({"points": [0, 0.0]}, "point 0.0 is given twice"),
        ({"average": "mean"}, "'mean'"),
        ({"ensembles": [[]]}, "at least one member"),
        ({"bn_loader": None}, "bn_loader"),
    ],
)
def test_bad_inputs_name_the_value(kwargs: dict, message: str):
    args = {"points": [0, 1], "bn_loader": _train_batches(), **kwargs}
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        top.evaluate_points(_small_cnn(), _eval_loader(), **args)


def test_a_shuffling_eval_loader_is_refused():
    dataset = _eval_loader().dataset
    loader = DataLoader(dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="must not shuffle"):
        top.evaluate_points(_small_cnn(), loader, [0, 1], bn_loader=_train_batches())


# ------------------------------------------------------------------------ reliability bins
def _binned_ece(bins: dict) -> float:
    """sum_b count_b / N * |accuracy_b - confidence_b| over the non-empty bins of a record."""
    n = sum(bins["count"])
    return sum(
        c / n * abs(a - f)
        for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"], strict=True)
        if c
    )


def test_reliability_bins_of_a_hand_made_tensor():
    probs = torch.tensor(
        [
            [0.97, 0.01, 0.01, 0.01],  # class 0, right: bin 19 [0.95, 1)
            [0.52, 0.48, 0.0, 0.0],  # class 0, right: bin 10 [0.5, 0.55)
            [0.32, 0.28, 0.2, 0.2],  # class 0, wrong: bin 6 [0.3, 0.35)
            [0.1, 0.62, 0.18, 0.1],  # class 1, right: bin 12 [0.6, 0.65)
        ]
    )
    targets = torch.tensor([0, 0, 1, 1])
    bins = reliability(probs, targets)
    filled = {6: (0.32, 0.0), 10: (0.52, 1.0), 12: (0.62, 1.0), 19: (0.97, 1.0)}
    assert bins.count == [1 if b in filled else 0 for b in range(20)]
    for b in range(20):
        if b in filled:
            assert (bins.confidence[b], bins.accuracy[b]) == pytest.approx(filled[b], abs=1e-6), b
        else:
            assert bins.confidence[b] is None and bins.accuracy[b] is None, b
    record = bins.to_dict()
    assert record["bins"] == 20 and json.loads(json.dumps(record)) == record
    ece = (0.32 + 0.48 + 0.38 + 0.03) / 4  # |accuracy - confidence| of each one-sample bin
    assert _binned_ece(record) == pytest.approx(ece, abs=1e-6)
    assert multiclass_calibration_error(probs, targets, 4, n_bins=20, norm="l1").item() == pytest.approx(
        ece, abs=1e-6
    )


def test_a_confidence_of_one_counts_in_the_last_bin():
    probs = torch.tensor([[0.97, 0.01, 0.01, 0.01], [1.0, 0.0, 0.0, 0.0]])
    bins = reliability(probs, torch.tensor([0, 1]))  # right at 0.97, wrong at 1.0
    assert bins.count[19] == 2 and sum(bins.count) == 2
    assert (bins.confidence[19], bins.accuracy[19]) == pytest.approx((0.985, 0.5), abs=1e-6)
    # torchmetrics counts the 1.0 in an extra bin of its own: (|1 - 0.97| + |0 - 1|) / 2 = 0.515
    tm = multiclass_calibration_error(probs, torch.tensor([0, 1]), 4, n_bins=20, norm="l1").item()
    assert tm == pytest.approx(0.515, abs=1e-6)
    assert _binned_ece(bins.to_dict()) == pytest.approx(0.485, abs=1e-6)  # |0.5 - 0.985|


def test_binned_ece_is_torchmetrics_ece_on_random_predictions():
    g = torch.Generator().manual_seed(4)
    probs = (2 * torch.randn(500, 5, generator=g)).softmax(1)
    targets = torch.randint(0, 5, (500,), generator=g)
    expected = multiclass_calibration_error(probs, targets, 5, n_bins=20, norm="l1").item()
    assert _binned_ece(reliability(probs, targets).to_dict()) == pytest.approx(expected, abs=1e-6)


def test_reliability_is_not_a_metric():
    from timm_overparam.train.families import METRICS

    assert METRICS == ["top1", "top5", "loss", "ece", "precision", "recall"]
    bins = Reliability(count=[1], confidence=[0.5], accuracy=[1.0])
    assert top.Metrics(0.5, 1.0, 0.7, 0.1, 0.5, 0.5) == top.Metrics(
        0.5, 1.0, 0.7, 0.1, 0.5, 0.5, reliability=bins
    )
    with pytest.raises(ValueError, match=r"probabilities \(N, C\) and targets \(N,\), got \(3,\) and \(3,\)"):
        reliability(torch.ones(3), torch.zeros(3))
    with pytest.raises(ValueError, match="bins must be an integer >= 1, got 0"):
        reliability(torch.ones(2, 2) / 2, torch.zeros(2), bins=0)


@pytest.mark.slow
def test_results_have_reliability_bins_and_seconds_per_step_also_after_a_resume(tmp_path):
    run(tmp_path, *FAST, "--epochs", "2", "--experiment", "op")
    folder = tmp_path / "op"
    res = run(tmp_path, *FAST, "--epochs", "2", "--resume", str(folder / "checkpoint-1"))  # epoch 1 again
    times = [float(r["train_step_time"]) for r in rows(folder)]
    assert len(times) == 2 and min(times) > 0
    saved = json.loads((folder / "results.json").read_text())
    assert saved["seconds_per_step"] == res["seconds_per_step"] == pytest.approx(sum(times) / 2, rel=1e-12)
    assert list(saved["reliability"]) == ["model"]  # the collapsed model, as evaluated
    bins = saved["reliability"]["model"]
    assert bins["bins"] == 20 and len(bins["count"]) == len(bins["confidence"]) == len(bins["accuracy"]) == 20
    assert sum(bins["count"]) == 360  # the digits' validation split
    assert _binned_ece(bins) == pytest.approx(saved["final"]["ece"], abs=1e-6)


def test_subspace_results_have_bins_per_point_and_ensemble(tmp_path):
    res = run(
        tmp_path,
        *FAST[2:],
        "--model",
        "test_resnet_line",
        "--epochs",
        "1",
        "--eval-points",
        "0,1",
        "--eval-ensembles",
        "0+1",
        "--bn-recal-batches",
        "3",
        "--experiment",
        "line",
    )
    assert list(res["reliability"]) == ["point0", "point1", "ens0+1"]
    for name, bins in res["reliability"].items():
        assert _binned_ece(bins) == pytest.approx(res["final"][f"{name}_ece"], abs=1e-6), name

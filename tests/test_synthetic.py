"""Seed 002's synthetic regression data: the laws, the 90/10 split, seeding, separability, and how the
trainer's data layer sees it (no image transforms, no classes)."""

import math

import pytest
import torch

from timm_overparam.research.synthetic import ConstantDataset, SinDataset, sin_bound
from timm_overparam.train import TrainConfig
from timm_overparam.train.data import DataInfo, describe, open_dataset, tensor_data_config
from timm_overparam.train.loop import open_data, set_transforms


def both(cls, **kwargs):
    return cls("train", **kwargs), cls("validation", **kwargs)


def test_sin_bound_is_e_to_the_minus_4c_over_8n():
    assert sin_bound(0.01, 100_000) == math.exp(-0.04) / 800_000
    assert sin_bound(0.0, 1) == 0.125
    assert SinDataset("validation", num_samples=200, c=0.5).bound == math.exp(-2.0) / 1600


def test_sin_inputs_lie_in_the_interval_and_targets_follow_the_law_exactly():
    train, val = both(SinDataset, num_samples=1000, c=0.01, seed=3)
    half = math.sqrt(math.exp(-0.04) / 8000)
    for ds in (train, val):
        x, y = ds.x, ds.y
        assert x.dtype == y.dtype == torch.float32 and x.shape == y.shape == (len(ds), 1)
        assert x.abs().max().item() <= half
        assert x.min().item() < -0.9 * half and x.max().item() > 0.9 * half  # the whole interval is used
        # y = sin(pi x / sqrt K), evaluated in float64 at the stored float32 x, rounded to float32
        assert torch.equal(y, torch.sin(math.pi * x.double() / half).float())
        item = ds[0]
        assert item[0].shape == item[1].shape == (1,) and torch.equal(item[0], x[0])


def test_sin_inputs_satisfy_the_separability_bound():
    """|x_i x_j| <= K = e^(-4c) / (8N) over all pairs (the products of float32 values are exact in float64)."""
    n, c = 400, 0.01
    train, val = both(SinDataset, num_samples=n, c=c, seed=0)
    x = torch.cat([train.x, val.x]).double().flatten()
    K = math.exp(-4 * c) / (8 * n)
    assert (x[:, None] * x[None, :]).abs().max().item() <= K
    assert x.abs().max().item() ** 2 > 0.95 * K  # and the bound is nearly attained: not vacuous


def test_constant_data_is_uniform_on_minus_one_one_with_target_c():
    train, val = both(ConstantDataset, num_samples=500, seed=1)
    assert train.c == 0.1  # the seed's default
    for ds in (train, val):
        assert ds.x.abs().max().item() <= 1 and ds.x.min().item() < -0.9 and ds.x.max().item() > 0.9
        assert torch.equal(ds.y, torch.full((len(ds), 1), 0.1))
    assert ConstantDataset("validation", num_samples=20, c=-2.5).y.unique().tolist() == [-2.5]


def test_defaults_are_the_seeds():
    ds = SinDataset("validation")
    assert (ds.c, ds.num_samples, len(ds)) == (0.01, 100_000, 10_000)


@pytest.mark.parametrize("n, val", [(100, 10), (105, 10), (10, 1), (19, 1)])
def test_split_is_90_10_disjoint_and_covers_every_sample(n, val):
    train, valid = both(SinDataset, num_samples=n, seed=0)
    assert (len(train), len(valid)) == (n - val, val)
    values = torch.cat([train.x, valid.x]).flatten()
    assert len(values.unique()) == n  # disjoint (continuous draws are distinct) and complete
    full, _ = train.draw(n, torch.Generator().manual_seed(0))  # the seeded sample the splits share
    assert sorted(values.tolist()) == sorted(full.flatten().tolist())


def test_seeded_reproducibility():
    a, b, c = (SinDataset("train", num_samples=300, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    d, e = (ConstantDataset("validation", num_samples=300, seed=s) for s in (7, 7))
    assert torch.equal(d.x, e.x)


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="splits 'train' and 'validation', got 'test'"):
        SinDataset("test")
    with pytest.raises(ValueError, match="integer >= 10"):
        ConstantDataset("train", num_samples=9)
    with pytest.raises(ValueError, match="c must be a finite number"):
        SinDataset("train", num_samples=10, c=math.inf)


def test_the_data_layer_opens_them_with_the_run_seed_and_describes_vectors():
    cfg = TrainConfig(
        dataset="synthetic/sin", task="regression", synthetic_samples=200, synthetic_c=0.2, seed=5
    )
    train, val, info = open_data(cfg)
    assert torch.equal(train.x, SinDataset("train", num_samples=200, c=0.2, seed=5).x) and len(val) == 20
    assert info == DataInfo(num_classes=None, in_chans=1, task="regression", target_dim=1, input_shape=(1,))
    assert info.outputs == 1
    # no image transforms: the items stay the tensors, and the data config is the vectors' shape
    config = set_transforms(cfg.replace(), None, train, val)
    assert config == tensor_data_config(info) and config["input_size"] == (1,)
    assert train.transform is None and torch.equal(train[3][0], train.x[3])
    constant = open_dataset("synthetic/constant", None, "train", train=True, synthetic_samples=30, seed=0)
    assert describe(constant).task == "regression" and len(constant) == 27


def test_unknown_synthetic_names_and_splits_are_errors():
    with pytest.raises(ValueError, match=r"unknown synthetic dataset 'synthetic/cos'"):
        open_dataset("synthetic/cos", None, "train", train=True)
    with pytest.raises(ValueError, match=r"not 'val' \(--val-split\)"):
        open_dataset("synthetic/sin", None, "val", train=False)


def test_a_batch_is_fetched_in_one_indexing_with_the_same_items():
    ds = SinDataset("train", num_samples=200, seed=3)
    items = ds.__getitems__([5, 0, 5, 17])
    for (x, y), i in zip(items, [5, 0, 5, 17], strict=True):
        assert torch.equal(x, ds[i][0]) and torch.equal(y, ds[i][1])
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False)
    x, y = next(iter(loader))
    assert torch.equal(x, ds.x[:64]) and torch.equal(y, ds.y[:64])

"""--train-fraction and --label-noise: the stratified subset, the noisy labels, and runs with them."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from test_train import FAST, write_image_folder, write_mnist

from timm_overparam.train.cli import parse_args, train_parser
from timm_overparam.train.config import ConfigError, TrainConfig
from timm_overparam.train.data import (
    DigitsDataset,
    TrainingView,
    dataset_labels,
    open_dataset,
    stratified_counts,
)
from timm_overparam.train.loop import Trainer, open_data

DIGITS_COUNTS = [142, 146, 142, 146, 145, 145, 145, 143, 139, 144]  # per class in the 1437 training digits
# --train-fraction 0.1 by hand: quotas 14.2 14.6 14.2 14.6 14.5 14.5 14.5 14.3 13.9 14.4 (sum 143.7);
# integer parts sum to 139, round(143.7) = 144, so 5 spare samples go to the largest fractional parts:
# class 8 (.9), classes 1 and 3 (.6), then two of the tied .5s (classes 4, 5, 6): the lower indices, 4 and 5
DIGITS_TENTH = [14, 15, 14, 15, 15, 15, 14, 14, 14, 14]


def test_digits_class_counts():
    assert sorted(Counter(DigitsDataset("train").targets).items()) == list(enumerate(DIGITS_COUNTS))


@pytest.mark.parametrize(
    "counts, fraction, expected",
    [
        (DIGITS_COUNTS, 0.1, DIGITS_TENTH),
        ([3, 3, 4], 0.5, [2, 1, 2]),  # quotas 1.5 1.5 2: one spare, the tie to class 0
        ([10, 10, 10], 0.25, [3, 3, 2]),  # quotas 2.5: floors 6, round(7.5) = 8 (to even): 0, 1
        ([7, 5], 1.0, [7, 5]),
        ([9, 1], 0.5, [5, 0]),  # quotas 4.5, 0.5: one spare, the tie to class 0: class 1 keeps none
    ],
)
def test_stratified_counts_by_hand(counts, fraction, expected):
    assert stratified_counts(counts, fraction) == expected


def test_a_tenth_of_the_digits_is_stratified():
    train = DigitsDataset("train")
    view = TrainingView(train, fraction=0.1, seed=7)
    assert len(view) == 144 and view.classes == train.classes
    assert [Counter(view.targets)[c] for c in range(10)] == DIGITS_TENTH
    assert view.indices == sorted(set(view.indices))  # distinct, in the dataset's order
    assert view.targets == [train.targets[i] for i in view.indices]  # no noise: the true labels
    image, label = view[3]
    assert label == train.targets[view.indices[3]]
    assert image.tobytes() == train[view.indices[3]][0].tobytes()


def test_the_seed_picks_the_subset():
    train = DigitsDataset("train")
    a, b, c = (TrainingView(train, fraction=0.5, seed=s).indices for s in (1, 1, 2))
    assert a == b and a != c
    assert len(a) == len(c) == 718  # round(718.5) = 718, half to even


def noisy_labels(n: int, noisy: int, seed: int) -> tuple[list[int], list[int]]:
    """The positions and labels the rule picks, drawn here from the seed as the docs describe."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(n, generator=generator)[:noisy].tolist()
    return chosen, torch.randint(10, (noisy,), generator=generator).tolist()


def test_label_noise_redraws_exactly_round_p_n_labels_at_seeded_positions():
    train = DigitsDataset("train")
    view = TrainingView(train, noise=0.25, seed=5)
    noisy = 359  # round(0.25 * 1437) = round(359.25)
    assert view.indices == list(range(1437))
    chosen, drawn = noisy_labels(1437, noisy, seed=5)
    assert [view.targets[i] for i in chosen] == drawn  # uniform over the 10 classes, drawn with the seed
    rest = sorted(set(range(1437)) - set(chosen))
    assert [view.targets[i] for i in rest] == [train.targets[i] for i in rest]  # the rest untouched
    changed = sum(view.targets[i] != train.targets[i] for i in chosen)
    assert 0.8 * noisy < changed < 0.97 * noisy  # a random label is the true one with probability 1/10
    assert TrainingView(train, noise=0.25, seed=5).targets == view.targets
    # the noisy samples are spread over the split, not its first positions (an image folder lists
    # its classes in order): about a quarter of each half
    assert 0.15 * 718 < sum(i < 718 for i in chosen) < 0.35 * 718


def test_noise_applies_to_the_subset():
    train = DigitsDataset("train")
    clean = TrainingView(train, fraction=0.2, seed=3)
    view = TrainingView(train, fraction=0.2, noise=0.5, seed=3)
    assert view.indices == clean.indices and len(view) == 287  # round(0.2 * 1437) = round(287.4)
    chosen, drawn = noisy_labels(287, 144, seed=3)  # round(0.5 * 287) = round(143.5) = 144 (half to even)
    assert [view.targets[i] for i in chosen] == drawn
    rest = sorted(set(range(287)) - set(chosen))
    assert [view.targets[i] for i in rest] == [clean.targets[i] for i in rest]


def test_transform_assignment_reaches_the_wrapped_dataset():
    train = DigitsDataset("train")
    view = TrainingView(train, fraction=0.5, seed=0)
    view.transform = lambda image: image.size
    assert train.transform is view.transform
    assert view[0] == ((8, 8), train.targets[view.indices[0]])


def test_a_class_that_would_vanish_is_an_error():
    # quotas 0.426 0.438 0.426 0.438 0.435 0.435 0.435 0.429 0.417 0.432: round(4.311) = 4 samples, to
    # classes 1, 3, 4, 5 (the largest fractional parts); class 0 is the first left without one
    with pytest.raises(ValueError, match=r"--train-fraction 0.003 keeps no sample of class '0' \(142 in the"):
        TrainingView(DigitsDataset("train"), fraction=0.003)


def test_open_data_wraps_the_training_split_only():
    train, val, info = open_data(TrainConfig(train_fraction=0.2, label_noise=0.5))
    assert isinstance(train, TrainingView) and len(train) == 287 and info.num_classes == 10
    assert isinstance(val, DigitsDataset) and val.targets == DigitsDataset("validation").targets
    plain, _, _ = open_data(TrainConfig())
    assert type(plain) is DigitsDataset  # no view at fraction 1 and noise 0
    assert type(open_data(TrainConfig(label_noise=0.1))[0]) is TrainingView


def test_an_image_folder_subset(tmp_path):
    write_image_folder(tmp_path)  # 2 classes x 6 images per split: class0 reddish, class1 bluish
    folder = open_dataset("", str(tmp_path), "train", train=True)
    assert dataset_labels(folder) == [0] * 6 + [1] * 6  # from the reader's samples, no image read
    view = TrainingView(folder, fraction=0.5, seed=0)
    assert len(view) == 6 and Counter(view.targets) == {0: 3, 1: 3}
    for i in range(len(view)):
        image, label = view[i]
        pixels = np.asarray(image, dtype=np.float64)
        assert label == (0 if pixels[..., 0].sum() > pixels[..., 2].sum() else 1)


def test_torchvision_tensor_targets(tmp_path):
    write_mnist(tmp_path, {"train": 100, "t10k": 10})  # torchvision's MNIST keeps its labels as a tensor
    mnist = open_dataset("torch/mnist", str(tmp_path), "train", train=True)
    assert dataset_labels(mnist) == mnist.targets.tolist()
    view = TrainingView(mnist, fraction=0.5, noise=0.1, seed=0)
    clean = [int(mnist.targets[i]) for i in view.indices]
    chosen, drawn = noisy_labels(50, 5, seed=0)  # round(0.1 * 50) = 5 noisy labels
    assert len(view) == 50 and [view.targets[i] for i in chosen] == drawn
    rest = [i for i in range(50) if i not in chosen]
    assert [view[i][1] for i in rest] == [clean[i] for i in rest]


@pytest.mark.parametrize(
    "values, message",
    [
        (
            dict(train_fraction=0.0),
            r"train_fraction must be in \(0, 1\] \(1 keeps the whole split\), got 0.0",
        ),
        (dict(train_fraction=1.5), r"train_fraction must be in \(0, 1\].*got 1.5"),
        (dict(label_noise=1.0), r"label_noise must be in \[0, 1\) \(0 keeps every label\), got 1.0"),
        (dict(label_noise=-0.1), r"label_noise must be in \[0, 1\).*got -0.1"),
    ],
)
def test_out_of_range_values_fail_when_the_config_is_built(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_out_of_range_flags_name_the_flag():
    with pytest.raises(ConfigError, match=r"--train-fraction must be in \(0, 1\]"):
        parse_args(train_parser(), ["--train-fraction", "0"])


def test_a_run_with_both_options(tmp_path):
    argv = [*FAST, "-b", "64", "--epochs", "1", "--train-fraction", "0.2", "--label-noise", "0.5"]
    trainer = Trainer(parse_args(train_parser(), [*argv, "--output", str(tmp_path), "--experiment", "d"]))
    assert len(trainer.train_set) == 287 and len(trainer.train_loader) == 4  # 287 // 64 full batches
    trainer.run()
    args = yaml.safe_load((tmp_path / "d" / "args.yaml").read_text())
    assert args["train_fraction"] == 0.2 and args["label_noise"] == 0.5
    assert json.loads((tmp_path / "d" / "last" / "trainer_state.json").read_text())["step"] == 4

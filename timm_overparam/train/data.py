"""Datasets and loaders for train.py/validate.py: timm's ``create_dataset`` and transforms, plus digits.

``sklearn/digits`` is the embedded default: scikit-learn's 1,797 8x8 grey-scale handwritten digits
(10 classes), shipped with the package, so nothing is downloaded. Every other name goes to timm's
``create_dataset``: ``torch/cifar10``, ``torch/mnist``, ``hfds/<hub id>``, ``tfds/...``,
``wds/...``, or an image folder (``''`` or ``folder`` with ``--data-dir``). ``synthetic/sin`` and
``synthetic/constant`` are seed 002's regression data (``research/synthetic.py``), drawn with the
run's seed: float vectors, not images, so they say ``tensor_inputs = True`` and get no image
transforms. ``TrainingView`` narrows a training split to a class-stratified fraction and replaces the
labels of its first samples by random ones (``--train-fraction``, ``--label-noise``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import create_dataset, create_transform, resolve_data_config
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from timm_overparam.train.config import DIGITS, SYNTHETIC

_FOLDER = ("", "folder")
_PREFIXES = ("torch/", "hfds/", "hfids/", "tfds/", "wds/")


class DigitsDataset(Dataset):
    """scikit-learn's 8x8 digits as grey-scale PIL images: a fixed, stratified 80/20 train/validation split.

    >>> ds = DigitsDataset("train"); len(ds), ds[0][0].size, ds.classes[:3]
    (1437, (8, 8), ['0', '1', '2'])
    """

    def __init__(self, split: str = "train", transform: Any = None) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "validation"):
            raise ValueError(f"{DIGITS} has the splits 'train' and 'validation', got {split!r}")
        data = load_digits()
        images = np.clip(data.images * 16, 0, 255).astype(np.uint8)  # values 0..16 -> 0..255
        index = np.arange(len(images))
        train, val = train_test_split(index, test_size=0.2, random_state=0, stratify=data.target)
        keep = np.sort(train if split == "train" else val)
        self.images, self.targets = images[keep], data.target[keep].tolist()
        self.classes = [str(c) for c in range(10)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[i], mode="L")
        return (self.transform(image) if self.transform else image), self.targets[i]


@dataclass
class DataInfo:
    """What the model must fit. Images: the number of classes and image channels. Tensor data
    (``tensor_inputs``): ``in_chans`` is the input's last dimension (its features) and
    ``input_shape`` the shape of one input; regression data has no classes (``num_classes`` None)
    and ``target_dim`` outputs. ``outputs`` is the model's output size (``num_classes`` of
    ``timm.create_model``).

    >>> DataInfo(num_classes=None, in_chans=1, task="regression", target_dim=1, input_shape=(1,)).outputs
    1
    """

    num_classes: int | None
    in_chans: int
    task: str = "classification"
    target_dim: int | None = None
    input_shape: tuple[int, ...] | None = None

    @property
    def outputs(self) -> int | None:
        """The model's output size: the classes, or the regression target's dimension."""
        return self.target_dim if self.task == "regression" else self.num_classes


def open_dataset(
    name: str,
    root: str | None,
    split: str,
    *,
    download: bool = False,
    train: bool,
    seed: int = 0,
    synthetic_samples: int = 100_000,
    synthetic_c: float | None = None,
) -> Dataset:
    """One split of a dataset by timm name (or ``sklearn/digits``, ``synthetic/...``), with clear
    errors for bad names/paths. Synthetic data is drawn with ``seed`` (``synthetic_samples`` samples,
    its ``c`` or the dataset's default).

    >>> len(open_dataset("sklearn/digits", None, "validation", train=False))
    360
    >>> len(open_dataset("synthetic/sin", None, "validation", train=False, synthetic_samples=50))
    5
    """
    if name == DIGITS:
        return DigitsDataset(split)
    if name in SYNTHETIC or name.startswith("synthetic/"):
        from timm_overparam.research.synthetic import open_synthetic  # only for these runs

        if split not in ("train", "validation"):
            flag = "--train-split" if train else "--val-split"
            raise ValueError(f"{name} has the splits 'train' and 'validation', not {split!r} ({flag})")
        return open_synthetic(name, split, c=synthetic_c, num_samples=synthetic_samples, seed=seed)
    if name not in _FOLDER and not name.startswith(_PREFIXES):
        raise ValueError(
            f"unknown dataset {name!r}: use {DIGITS!r}, an image folder ('' with --data-dir), a timm "
            f"dataset name starting with one of {list(_PREFIXES)} (e.g. 'torch/cifar10'), or one of "
            f"{list(SYNTHETIC)}"
        )
    if root is None and not name.startswith(("hfds/", "hfids/")):
        raise ValueError(f"dataset {name!r} needs --data-dir (the folder that holds or receives it)")
    if root is not None and not download and not os.path.isdir(root):
        raise ValueError(f"data dir {root!r} does not exist (for torch/ datasets add --dataset-download)")
    if name in _FOLDER:
        name = ""
    try:
        dataset = create_dataset(
            name, root=root, split=split, is_training=train, download=download, input_img_mode=None
        )
    except (RuntimeError, AssertionError, FileNotFoundError) as e:
        hint = " (add --dataset-download to fetch it)" if name.startswith("torch/") and not download else ""
        raise ValueError(
            f"cannot open dataset {name or 'folder'!r} split {split!r} in {root!r}: {e}{hint}"
        ) from e
    # timm reads the data dir itself when it has no folder for the split: that would train on
    # (or evaluate on) every image of the data dir, the other split's included
    found = getattr(getattr(dataset, "reader", dataset), "root", None)
    if name in ("", "torch/folder", "torch/image_folder") and found and os.path.samefile(found, root):
        flag = "--train-split" if train else "--val-split"
        raise ValueError(
            f"image folder {root!r} has no {split!r} split (a sub-folder {split}/, or one of timm's "
            f"synonyms: train/training, val/valid/validation/eval/evaluation): add it, or set {flag} to "
            f"an existing sub-folder of {sorted(p.name for p in os.scandir(root) if p.is_dir())}"
        )
    return dataset


def class_names(dataset: Dataset) -> list[str] | None:
    """The class names of a dataset in label order (its ``classes``, or its timm reader's
    ``class_to_idx``), or None when it names none.

    >>> class_names(DigitsDataset("validation"))[:3]
    ['0', '1', '2']
    """
    classes = getattr(dataset, "classes", None)
    if classes is None:
        mapping = getattr(getattr(dataset, "reader", None), "class_to_idx", None)
        classes = None if mapping is None else sorted(mapping, key=mapping.__getitem__)
    return None if classes is None else [str(c) for c in classes]


def dataset_labels(dataset: Dataset) -> list[int]:
    """The label of every item, in order: the dataset's ``targets`` (digits, torchvision), its timm
    reader's ``samples`` or ``targets``, else each item read once.

    >>> dataset_labels(DigitsDataset("validation"))[:5]
    [1, 4, 8, 6, 5]
    """
    targets = None
    if getattr(dataset, "target_transform", None) is None:  # else the stored labels are not the items'
        reader = getattr(dataset, "reader", None)
        targets = getattr(dataset, "targets", None)
        if targets is None and getattr(reader, "samples", None) is not None:
            targets = [target for _, target in reader.samples]
        if targets is None:
            targets = getattr(reader, "targets", None)
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]
    return [int(t) for t in (targets.tolist() if isinstance(targets, Tensor) else targets)]


def stratified_counts(counts: Sequence[int], fraction: float) -> list[int]:
    """How many samples of each class a stratified ``fraction`` keeps (largest-remainder rounding).

    Class ``c``'s quota is ``fraction * counts[c]``, computed exactly (the fraction as written,
    ``0.1`` is 1/10). Every class keeps the integer part of its quota; the
    ``round(fraction * sum(counts))`` minus those go one each to the classes with the largest
    fractional parts, the lower class index first on ties. So the subset has
    ``round(fraction * N)`` samples and each class the floor or the ceiling of its quota.

    >>> stratified_counts([3, 3, 4], 0.5)  # quotas 1.5, 1.5, 2: one spare sample, the tie to class 0
    [2, 1, 2]
    """
    share = Fraction(repr(float(fraction)))
    quotas = [share * n for n in counts]
    kept = [int(q) for q in quotas]
    spare = round(share * sum(counts)) - sum(kept)
    by_remainder = sorted(range(len(counts)), key=lambda c: (-(quotas[c] - kept[c]), c))
    for c in by_remainder[:spare]:
        kept[c] += 1
    return kept


class TrainingView(Dataset):
    """A training split narrowed to a class-stratified ``fraction`` (``stratified_counts``, the samples
    of each class drawn with ``seed``; kept in the dataset's order), where the first ``round(noise * N)``
    samples of a random order drawn with ``seed`` get labels drawn uniformly from the classes (the
    subspace paper's rule on a shuffled split; a drawn label may be the true one). Items are ``(image, label)``; ``targets`` are the view's labels, ``indices``
    its items' positions in the wrapped dataset. Assigning ``transform`` sets the wrapped dataset's.

    >>> view = TrainingView(DigitsDataset("train"), fraction=0.1, noise=0.5, seed=0)
    >>> len(view), len(view.classes), view.indices[:3]
    (144, 10, [9, 11, 39])
    """

    def __init__(self, dataset: Dataset, *, fraction: float = 1.0, noise: float = 0.0, seed: int = 0) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"the training fraction must be in (0, 1], got {fraction!r}")
        if not 0 <= noise < 1:
            raise ValueError(f"the label noise must be in [0, 1), got {noise!r}")
        classes = class_names(dataset)
        if classes is None:
            raise ValueError(
                "cannot tell the classes of the training set, which --train-fraction and --label-noise need: "
                "use a dataset that names its classes (classes, or a timm reader's class_to_idx)"
            )
        labels = dataset_labels(dataset)
        bad = [t for t in labels if not 0 <= t < len(classes)]
        if bad:
            raise ValueError(f"the training set has the label {bad[0]}, outside its {len(classes)} classes")
        members: list[list[int]] = [[] for _ in classes]  # each class's positions, in order
        for i, t in enumerate(labels):
            members[t].append(i)
        kept = stratified_counts([len(m) for m in members], fraction)
        for c, (n, k) in enumerate(zip(map(len, members), kept, strict=True)):
            if n and not k:
                raise ValueError(
                    f"--train-fraction {fraction} keeps no sample of class {classes[c]!r} ({n} in the "
                    f"training split): at least one per class must remain; use a fraction >= {1 / n:.3g}"
                )
        generator = torch.Generator().manual_seed(seed)
        indices: list[int] = []
        for m, k in zip(members, kept, strict=True):
            indices += [m[j] for j in torch.randperm(len(m), generator=generator)[:k].tolist()]
        self.dataset, self.classes, self.indices = dataset, classes, sorted(indices)
        self.targets = [labels[i] for i in self.indices]
        noisy = round(Fraction(repr(float(noise))) * len(self.targets))
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(len(self.targets), generator=generator)[:noisy].tolist()
        drawn = torch.randint(len(classes), (noisy,), generator=generator).tolist()
        for i, label in zip(chosen, drawn, strict=True):
            self.targets[i] = label

    @property
    def transform(self) -> Any:
        """The wrapped dataset's transform (assigning it sets theirs)."""
        return self.dataset.transform

    @transform.setter
    def transform(self, value: Any) -> None:
        self.dataset.transform = value

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.dataset[self.indices[i]][0], self.targets[i]


def describe(dataset: Dataset) -> DataInfo:
    """What a model needs of a dataset: for (PIL image, label) items the number of classes and
    channels; for tensor data (``tensor_inputs``) the input's shape and features (``in_chans``),
    and for regression data (``task = "regression"``) the target's dimension instead of classes.

    >>> describe(open_dataset("synthetic/constant", None, "validation", train=False, synthetic_samples=10))
    DataInfo(num_classes=None, in_chans=1, task='regression', target_dim=1, input_shape=(1,))
    """
    if getattr(dataset, "tensor_inputs", False):
        return _describe_tensors(dataset)
    image = dataset[0][0]
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected PIL images from the dataset, got {type(image).__name__}")
    classes = class_names(dataset)
    if classes is None:
        raise ValueError("cannot tell the number of classes of the dataset: pass --num-classes")
    bands = (
        len(image.convert("RGB").getbands()) if image.mode in ("P", "RGBA", "CMYK") else len(image.getbands())
    )
    return DataInfo(num_classes=len(classes), in_chans=bands)


def _describe_tensors(dataset: Dataset) -> DataInfo:
    x, y = dataset[0][:2]
    if not isinstance(x, Tensor) or x.ndim == 0:
        raise TypeError(f"expected tensor inputs of at least 1 dimension, got {x!r}")
    task = getattr(dataset, "task", "classification")
    if task == "regression":
        y = torch.as_tensor(y)
        return DataInfo(
            num_classes=None,
            in_chans=x.shape[-1],
            task=task,
            target_dim=y.numel(),
            input_shape=tuple(x.shape),
        )
    classes = class_names(dataset)
    if classes is None:
        raise ValueError("cannot tell the number of classes of the dataset: pass --num-classes")
    return DataInfo(num_classes=len(classes), in_chans=x.shape[-1], input_shape=tuple(x.shape))


def tensor_data_config(info: DataInfo) -> dict[str, Any]:
    """The data config of tensor data (what ``data_config`` gives for images): its input shape, no
    crop, interpolation or normalisation.

    >>> tensor_data_config(DataInfo(None, 1, "regression", 1, (1,)))["input_size"]
    (1,)
    """
    return {
        "input_size": info.input_shape,
        "crop_pct": None,
        "interpolation": None,
        "mean": None,
        "std": None,
    }


def data_config(model: torch.nn.Module, args: Any, in_chans: int) -> dict[str, Any]:
    """timm's data config for ``model`` and the run config ``args``, for ``in_chans`` channels.

    A mean/std of another length (e.g. ImageNet's 3 values for a 1-channel model) becomes their
    average repeated per channel.
    """
    values = args.to_dict() if hasattr(args, "to_dict") else dict(vars(args))
    config = resolve_data_config(values, model=model)
    config["input_size"] = (in_chans, *config["input_size"][1:])
    for key in ("mean", "std"):
        if len(config[key]) != in_chans:
            config[key] = (sum(config[key]) / len(config[key]),) * in_chans
    return config


def transforms(config: dict[str, Any], args: Any, *, train: bool, digits: bool) -> Any:
    """timm's train or eval transform; digits never get crops or flips (they would erase 8x8 digits)."""
    common = dict(
        input_size=config["input_size"],
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
        crop_pct=config["crop_pct"],
    )
    if not train:
        return create_transform(**common, is_training=False)
    return create_transform(
        **common,
        is_training=True,
        no_aug=args.no_aug or digits,
        scale=args.scale,
        ratio=args.ratio,
        hflip=args.hflip,
        vflip=args.vflip,
        color_jitter=args.color_jitter,
        auto_augment=args.aa,
        re_prob=args.reprob,
    )


def loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, workers: int, seed: int, drop_last: bool = False
) -> DataLoader:
    """A DataLoader with a seeded shuffle (the same order on every process and after a resume)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=workers > 0,
    )

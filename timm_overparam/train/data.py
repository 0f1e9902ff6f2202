"""Datasets and loaders for train.py/validate.py: timm's ``create_dataset`` and transforms, plus digits.

``sklearn/digits`` is the embedded default: scikit-learn's 1,797 8x8 grey-scale handwritten digits
(10 classes), shipped with the package, so nothing is downloaded. Every other name goes to timm's
``create_dataset``: ``torch/cifar10``, ``torch/mnist``, ``hfds/<hub id>``, ``tfds/...``,
``wds/...``, or an image folder (``''`` or ``folder`` with ``--data-dir``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import create_dataset, create_transform, resolve_data_config
from torch.utils.data import DataLoader, Dataset

from timm_overparam.train.config import DIGITS

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
    """What the model must fit: the number of classes and image channels of a dataset."""

    num_classes: int
    in_chans: int


def open_dataset(name: str, root: str | None, split: str, *, download: bool = False, train: bool) -> Dataset:
    """One split of a dataset by timm name (or ``sklearn/digits``), with clear errors for bad names/paths.

    >>> len(open_dataset("sklearn/digits", None, "validation", train=False))
    360
    """
    if name == DIGITS:
        return DigitsDataset(split)
    if name not in _FOLDER and not name.startswith(_PREFIXES):
        raise ValueError(
            f"unknown dataset {name!r}: use {DIGITS!r}, an image folder ('' with --data-dir), or a timm "
            f"dataset name starting with one of {list(_PREFIXES)} (e.g. 'torch/cifar10')"
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


def describe(dataset: Dataset) -> DataInfo:
    """Number of classes and channels of a dataset whose items are (PIL image, label)."""
    image = dataset[0][0]
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected PIL images from the dataset, got {type(image).__name__}")
    classes = getattr(dataset, "classes", None)
    if classes is None:
        reader = getattr(dataset, "reader", None)
        classes = getattr(reader, "class_to_idx", None)
    if classes is None:
        raise ValueError("cannot tell the number of classes of the dataset: pass --num-classes")
    bands = (
        len(image.convert("RGB").getbands()) if image.mode in ("P", "RGBA", "CMYK") else len(image.getbands())
    )
    return DataInfo(num_classes=len(classes), in_chans=bands)


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

"""Loss landscapes (Li et al. 2018) of any model of this project: plain, op and subspace.

    python -m timm_overparam.research.landscape render output/train/<exp> --steps 41 --span 1 --out s.npy
    accelerate launch -m timm_overparam.research.landscape render output/train/<exp> --out s.npy
    python -m timm_overparam.research.landscape plot s.npy --out landscape.png

Two random Gaussian directions over the chosen parameters, the second orthogonal to the first, both
filter-normalised to the weights (``directions``); the loss at ``theta + x d1 + y d2`` on a
``steps x steps`` grid of ``x, y`` in ``[-span, span]``, on the first batches of a fixed loader, in
eval mode (``surface``); a 3-D surface and a contour plot side by side (``plot``). Which weights a
family's landscape is taken over (``landscape_model``): plain models their parameters, op models the
stock weights of ``collapse(model)`` (the function, in the coordinates of the stock architecture),
subspace models the stock weights at one point (``extract_point``). docs/depth_limit.md ("Loss
landscape") gives every choice and why.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from timm_overparam.core.atomic import atomic_path, write_text_atomic
from timm_overparam.core.modes import preserve_modes

__all__ = [
    "cosine",
    "directions",
    "grid",
    "landscape_model",
    "loss_function",
    "main",
    "plot",
    "render",
    "surface",
]

Directions = dict[str, Tensor]  # parameter name -> direction tensor (the parameter's shape, device, dtype)
ONE_D = ("zero", "layer")  # what 1-D tensors (biases, BatchNorm/LayerNorm affine) get
WEIGHTS = ("stock", "native")  # op/subspace models: the stock weights, or the model's own tensors


# ----------------------------------------------------------------------------- which weights
def _family(model: nn.Module) -> str:
    from timm_overparam.train.families import family

    return family(model)


def centre_point(model: nn.Module) -> float | tuple[float, ...]:
    """The middle of a subspace: 0.5 for lines and curves, the barycentre for simplexes.

    >>> from timm_overparam.subspace import subspace
    >>> centre_point(subspace(nn.Linear(2, 2)))
    0.5
    """
    config = model.subspace_config
    return tuple([1.0 / config.n] * config.n) if config.shape == "simplex" else 0.5


def landscape_model(
    model: nn.Module,
    *,
    point: Any = None,
    weights: str = "stock",
    bn_loader: Iterable | None = None,
    bn_batches: int | None = None,
) -> nn.Module:
    """The model whose parameters the landscape moves (a copy, or ``model`` itself where stated).

    - plain models: ``model`` itself (``surface`` restores every weight afterwards);
    - op models: ``collapse(model)`` with ``weights="stock"`` (the default: the landscape of the
      function in the stock architecture's coordinates, comparable between op depths and with the
      plain model), ``model`` itself with ``weights="native"`` (the trainable factors, the space the
      optimiser walks in);
    - subspace models: the model at ``point`` (default ``centre_point``), as the stock model
      ``extract_point(model, point)`` (``"stock"``) or as a copy of the subspace model moved there
      (``"native"``: the vertices are the parameters). With ``bn_loader`` its BatchNorm statistics
      are recalibrated at the point on ``bn_batches`` batches (the stored ones are a mixture over the
      sampled points of training), as validate.py does for every point.

    Example: ``net = landscape_model(timm.create_model("resnet18_line"), point=0.5, bn_loader=train)``
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
    kind = _family(model)
    if kind != "subspace" and point is not None:
        raise ValueError(f"a point is for subspace models (<arch>_line/_curve/_simplex), not a {kind} model")
    if kind == "op":
        from timm_overparam.expand.convert import collapse

        return collapse(model) if weights == "stock" else model
    if kind != "subspace":
        return model
    from timm_overparam.subspace.bn import recalibrate_bn
    from timm_overparam.subspace.parametrization import coefficients
    from timm_overparam.subspace.points import extract_point, set_point

    point = centre_point(model) if point is None else point
    config = model.subspace_config
    coefficients(config.shape, config.n, point)  # a point off the subspace is an error here
    if weights == "stock":
        target = extract_point(model, point)
    else:
        target = copy.deepcopy(model)
        set_point(target, point)
    if bn_loader is not None:
        recalibrate_bn(target, bn_loader, bn_batches, _device(target))
    return target


def _device(model: nn.Module) -> torch.device:
    return next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device


def select(model: nn.Module, params: str | Sequence[str] | None = None) -> dict[str, nn.Parameter]:
    """The parameters a landscape moves: every trainable float parameter (``params=None``), or the
    float parameters (trainable or not) whose names match one of the fnmatch patterns ``params``
    (a string may hold several, comma-separated).

    >>> list(select(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), "1.*"))
    ['1.weight', '1.bias']
    """
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if params is None:
        chosen = {n: p for n, p in named if p.requires_grad}
        if not chosen:
            raise ValueError("the model has no trainable float parameters: choose some with params=")
        return chosen
    patterns = [s for s in ([params] if isinstance(params, str) else list(params)) for s in s.split(",") if s]
    if not patterns:
        raise ValueError(f"params={params!r} holds no pattern")
    chosen = {n: p for n, p in named if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)}
    if not chosen:
        names = [n for n, _ in named]
        raise ValueError(
            f"no float parameter matches {patterns} (fnmatch on names, e.g. 'blocks.*'); "
            f"the model has {len(names)}, e.g. {names[:6]}"
        )
    return chosen


# ---------------------------------------------------------------------------------- directions
def _filters(t: Tensor) -> Tensor:
    """``t`` as rows of filters: its first-dimension slices, or one row (1-D tensors, and tensors
    whose filters would hold one element each, such as the ``(dim, 1)`` input weight)."""
    if t.dim() <= 1 or t[0].numel() == 1:
        return t.reshape(1, -1)
    return t.reshape(t.shape[0], -1)


def _scale_rows(d: Tensor, w: Tensor) -> Tensor:
    """Each row of ``d`` scaled to the norm of the same row of ``w`` (a zero row of ``d`` stays zero)."""
    norm = d.norm(dim=1, keepdim=True)
    return d * (w.norm(dim=1, keepdim=True) / torch.where(norm > 0, norm, torch.ones_like(norm)))


def directions(
    model: nn.Module,
    params: str | Sequence[str] | None = None,
    generator: torch.Generator | None = None,
    one_d: str = "zero",
) -> tuple[Directions, Directions]:
    """Two filter-normalised random directions ``(d1, d2)``, orthogonal, over ``select(model, params)``.

    Per parameter tensor ``w`` (Li et al. 2018, "filter normalisation"): Gaussian draws ``g1, g2``
    (on the generator's device, CPU by default, so a seed gives the same directions on every
    device), viewed as filters (first-dimension slices). ``d1``'s filters are ``g1``'s scaled to the
    norms of ``w``'s filters; ``d2``'s are ``g2``'s made orthogonal to ``d1``'s filter by filter
    (Gram-Schmidt) and then scaled the same way. Orthogonal filter by filter, the two directions are
    orthogonal over the whole concatenation too, and both keep the filter norms exactly (a
    Gram-Schmidt over the concatenation followed by the normalisation would lose the orthogonality).
    A tensor whose filters hold one element each is one filter (normalised per layer); a tensor of a
    single element cannot hold two orthogonal non-zero directions: both get ``+-|w|`` (random signs),
    so with such tensors (the 1x1 blocks of a ``dim=1`` depth-limit net) the directions are only
    nearly orthogonal: ``cosine(d1, d2)`` says how nearly. Filters of zero weight get zero.

    1-D tensors (biases, BatchNorm and LayerNorm scales and shifts): ``one_d="zero"`` (default, Li
    et al.'s ``biasbn`` choice) leaves them out (they stay at their trained values); ``"layer"``
    moves them, each tensor normalised as one filter.

    Returned as ``{name: tensor}`` in ``model.named_parameters()`` order, on each parameter's device
    and dtype (meta tensors for a model on the meta device).

    Example: ``d1, d2 = directions(model, "blocks.*", torch.Generator().manual_seed(0))``
    """
    if one_d not in ONE_D:
        raise ValueError(f"one_d must be one of {list(ONE_D)}, got {one_d!r}")
    chosen = select(model, params)
    out1: Directions = {}
    out2: Directions = {}
    gen_device = generator.device if generator is not None else torch.device("cpu")
    for name, p in chosen.items():  # every tensor draws, so one_d never changes the others' directions
        g1 = torch.randn(p.shape, generator=generator, device=gen_device, dtype=torch.float32)
        g2 = torch.randn(p.shape, generator=generator, device=gen_device, dtype=torch.float32)
        if p.dim() <= 1 and one_d == "zero":
            continue
        work = torch.float64 if p.dtype == torch.float64 else torch.float32
        w = _filters(p.detach().to(work))
        g1, g2 = _filters(g1.to(p.device, work)), _filters(g2.to(p.device, work))
        d1 = _scale_rows(g1, w)
        if w.shape[1] > 1:  # Gram-Schmidt of each filter of g2 against d1's
            dd = (d1 * d1).sum(dim=1, keepdim=True)
            g2 = g2 - d1 * ((g2 * d1).sum(dim=1, keepdim=True) / torch.where(dd > 0, dd, torch.ones_like(dd)))
        d2 = _scale_rows(g2, w)
        out1[name] = d1.reshape(p.shape).to(p.dtype)
        out2[name] = d2.reshape(p.shape).to(p.dtype)
    if not out1:
        raise ValueError(
            f"every chosen parameter is 1-D ({list(chosen)[:4]}) and one_d='zero' leaves them out: "
            "choose matrices or conv kernels, or pass one_d='layer'"
        )
    return out1, out2


def cosine(d1: Directions, d2: Directions) -> float:
    """The cosine of the angle between two directions over their concatenation (float64).

    >>> cosine({"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 2.0])})
    0.0
    """
    dot = sum(float((d1[k].double() * d2[k].double()).sum()) for k in d1)
    n1 = math.sqrt(sum(float(d1[k].double().pow(2).sum()) for k in d1))
    n2 = math.sqrt(sum(float(d2[k].double().pow(2).sum()) for k in d2))
    return dot / (n1 * n2) if n1 and n2 else 0.0


# ------------------------------------------------------------------------------------- surface
def grid(steps: int, span: float) -> list[float]:
    """The coordinates ``span * (2 i - (steps - 1)) / (steps - 1)``: linspace(-span, span, steps),
    exactly symmetric, with an exact 0 in the middle when ``steps`` is odd.

    >>> grid(5, 1.0)
    [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(span, (int, float)) and math.isfinite(span) and span > 0):
        raise ValueError(f"span must be a finite number > 0, got {span!r}")
    if steps == 1:
        return [0.0]
    return [span * (2 * i - (steps - 1)) / (steps - 1) for i in range(steps)]


def loss_function(config: Any = None) -> tuple[Callable[[Tensor, Tensor], Tensor], str]:
    """The run's criterion and its name: cross-entropy (with the run's label smoothing) for
    classification; ``mean_i |y_i - yhat_i|_p^p`` for a run with ``task: regression`` (``p_loss``).

    train.py's own ``make_criterion`` builds it where the training loop has one; the keys are read
    with defaults, so configs from before the regression task work too.

    >>> loss_function(SimpleNamespace(smoothing=0.0))[1], loss_function(SimpleNamespace(task="regression", p_loss=1.5))[1]
    ('cross_entropy', 'p_loss(p=1.5)')
    """
    task = getattr(config, "task", None) or "classification"
    p = float(getattr(config, "p_loss", None) or 2.0)
    smoothing = float(getattr(config, "smoothing", None) or 0.0)
    if task == "regression":
        name = f"p_loss(p={p:g})"
    else:
        name = f"cross_entropy(smoothing={smoothing:g})" if smoothing else "cross_entropy"
    try:
        from timm_overparam.train.loop import make_criterion  # train.py's criterion
    except ImportError:
        make_criterion = None
    if make_criterion is not None:
        return make_criterion(SimpleNamespace(task=task, p_loss=p, smoothing=smoothing)), name
    if task == "regression":

        def p_loss(out: Tensor, y: Tensor) -> Tensor:
            diff = out - y.reshape(out.shape).to(out.dtype)
            return diff.abs().pow(p).reshape(len(out), -1).sum(dim=1).mean()

        return p_loss, name
    if smoothing:
        from timm.loss import LabelSmoothingCrossEntropy

        return LabelSmoothingCrossEntropy(smoothing), name
    return nn.CrossEntropyLoss(), name


def _processes() -> Any:
    """accelerate's PartialState (one process without ``accelerate launch``; on CPUs when
    ``ACCELERATE_USE_CPU`` is set, as the Accelerator of train.py reads it)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


@torch.no_grad()
def surface(
    model: nn.Module,
    loader: Iterable,
    d1: Directions,
    d2: Directions,
    steps: int = 41,
    span: float = 1.0,
    batches: int | None = 4,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """The loss at ``theta + x d1 + y d2`` for ``x, y`` in ``grid(steps, span)``: a float64
    ``(steps, steps)`` array, rows along ``d1`` (x), columns along ``d2`` (y).

    The data are the first ``batches`` batches of ``loader`` (all with ``None``), read once, moved to
    the model's device and used for every grid point; the loss of a grid point is the mean over their
    samples (each batch's mean ``loss_fn``, default cross-entropy, weighted by its size). The model
    runs in eval mode (every module's flag restored afterwards): BatchNorm uses its stored running
    statistics, those of the centre, at every grid point. Every weight gets back its exact value
    (the saved tensors are copied back, also after an error). With several processes
    (``accelerate launch``) the grid points are split between them (``split_between_processes``) and
    the losses gathered (``gather_object``): every process returns the whole surface.

    Example: ``s = surface(net, train_loader, *directions(net), steps=21, span=0.5, batches=8)``
    """
    coords = grid(steps, span)
    if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int) or batches < 1):
        raise ValueError(f"batches must be an integer >= 1 or None (all), got {batches!r}")
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    named = dict(model.named_parameters())
    missing = [k for k in d1 if k not in named]
    if missing or set(d1) != set(d2):
        raise ValueError(f"the directions do not fit the model: unknown parameters {missing[:4]}")
    for k in d1:
        if d1[k].shape != named[k].shape or d2[k].shape != named[k].shape:
            raise ValueError(
                f"direction {k!r} has shape {list(d1[k].shape)}, the parameter {list(named[k].shape)}"
            )
    device = _device(model)
    data = [(x.to(device), y.to(device)) for x, y in itertools.islice(loader, batches)]
    if not data:
        raise ValueError("the loader yielded no batches")
    total = sum(len(x) for x, _ in data)
    params = {k: named[k] for k in d1}
    theta = {k: p.detach().clone() for k, p in params.items()}
    dirs = {k: (d1[k].to(p.device, p.dtype), d2[k].to(p.device, p.dtype)) for k, p in params.items()}
    state = _processes()
    points = list(range(steps * steps))
    from tqdm import tqdm

    mine: list[tuple[int, float]] = []
    try:
        with preserve_modes(model, training=False), state.split_between_processes(points) as share:
            bar = tqdm(share, desc="landscape", disable=not (progress and state.is_local_main_process))
            for k in bar:
                x, y = coords[k // steps], coords[k % steps]
                for name, p in params.items():
                    a, b = dirs[name]
                    p.copy_(torch.add(theta[name], a, alpha=x).add_(b, alpha=y))
                loss = 0.0
                with parametrize.cached():  # op factors composed once per grid point, not per batch
                    for inputs, targets in data:
                        loss += float(loss_fn(model(inputs), targets)) * len(inputs)
                mine.append((k, loss / total))
    finally:
        for name, p in params.items():
            p.copy_(theta[name])
    gathered = mine
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        gathered = gather_object(mine)
    out = np.full((steps, steps), np.nan)
    for k, value in gathered:
        out[k // steps, k % steps] = value
    return out


# ---------------------------------------------------------------------------- runs and files
def _run_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(args.yaml, checkpoint folder) of a run folder (its ``last``) or of a checkpoint folder in one."""
    path = Path(path)
    if (path / "args.yaml").is_file():
        if not (path / "last").exists():
            raise ValueError(
                f"run folder {str(path)!r} has no checkpoint 'last' (did its first epoch finish?)"
            )
        return path / "args.yaml", path / "last"
    if (path / "trainer_state.json").is_file() and (path.resolve().parent / "args.yaml").is_file():
        return path.resolve().parent / "args.yaml", path
    raise ValueError(
        f"{str(path)!r} is neither a run folder (args.yaml, last/) nor a checkpoint folder of one "
        "(trainer_state.json, with args.yaml in its parent)"
    )


def _parse_point(text: str | None) -> Any:
    if text is None:
        return None
    from timm_overparam.train.config import parse_points

    points = parse_points(text)
    if len(points) != 1:
        raise ValueError(f"--point takes one point (0.5, or 0.2:0.3:0.5 on a simplex), got {text!r}")
    return points[0]


def render(
    run: str | os.PathLike,
    *,
    steps: int = 41,
    span: float = 1.0,
    batches: int | None = 4,
    params: str | Sequence[str] | None = None,
    point: Any = None,
    weights: str = "stock",
    one_d: str = "zero",
    seed: int = 0,
    split: str = "train",
    batch_size: int | None = None,
    bn_recal_batches: int | None = None,
    smoothing: float | None = None,
    use_ema: bool = False,
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The landscape of a train.py run: ``(surface, record)``; ``record`` is what the sidecar holds.

    The model and data are rebuilt from the run's ``args.yaml`` as validate.py rebuilds them
    (``create_model``, ``open_data``, ``set_transforms`` without augmentation), the weights read from
    the checkpoint (``run/last``, or the checkpoint folder given; checked against its sha256). The data
    are the first ``batches`` batches of the ``split`` (``train``: the run's training subset, labels
    as trained, eval transforms), in order, ``batch_size`` each (default: the run's ``-b``). Subspace
    models: ``point`` (default the centre) with BatchNorm recalibrated on ``bn_recal_batches``
    training batches (default: the run's ``--bn-recal-batches``; 0: keep the stored statistics).
    The loss is the run's criterion (``smoothing`` overrides its label smoothing).

    Example: ``s, record = render("output/train/exp", steps=21, span=0.5, params="layer4.*")``
    """
    from timm_overparam.core.weights import load_weights
    from timm_overparam.train.config import TrainConfig
    from timm_overparam.train.data import loader
    from timm_overparam.train.loop import create_model, open_data, set_transforms
    from timm_overparam.train.validation import weights_file as checked_weights_file

    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    grid(steps, span)  # bad sizes before anything is loaded
    args_file, checkpoint = _run_paths(run)
    cfg = TrainConfig.from_yaml(str(args_file)).replace(pretrained=False, pretrained_path=None)
    if smoothing is not None:
        cfg = cfg.replace(smoothing=smoothing)
    weights_file = checked_weights_file(
        SimpleNamespace(model=cfg.model, checkpoint=str(checkpoint), use_ema=use_ema)
    )
    state = _processes()
    train_set, val_set, info = open_data(cfg)
    model = create_model(cfg, info)
    load_weights(model, weights_file)
    kind = _family(model)
    if kind != "subspace" and point is not None:
        raise ValueError(f"--point is for subspace models, and {cfg.model!r} is a {kind} model")
    set_transforms(cfg, model, train_set, val_set, augment=False)
    model.to(state.device)
    bn_batches = cfg.bn_recal_batches if bn_recal_batches is None else bn_recal_batches
    bn = None
    if kind == "subspace" and bn_batches:
        bn = loader(train_set, cfg.batch_size, shuffle=True, workers=0, seed=cfg.seed)  # validate.py's
    if kind == "subspace" and point is None:
        point = centre_point(model)
    target = landscape_model(model, point=point, weights=weights, bn_loader=bn, bn_batches=bn_batches or None)
    d1, d2 = directions(target, params, torch.Generator().manual_seed(seed), one_d=one_d)
    dataset = train_set if split == "train" else val_set
    size = batch_size or cfg.batch_size
    data = loader(dataset, size, shuffle=False, workers=cfg.workers, seed=cfg.seed)
    loss_fn, loss_name = loss_function(cfg)
    values = surface(target, data, d1, d2, steps, span, batches, loss_fn, progress)
    coords = grid(steps, span)
    used = min(len(data), batches) if batches else len(data)
    record: dict[str, Any] = {
        "run": str(Path(run)),
        "checkpoint": str(weights_file),
        "model": cfg.model,
        "family": kind,
        "weights": weights if kind != "plain" else "stock",
        "point": point,
        "bn_recal_batches": bn_batches if kind == "subspace" else None,
        "steps": steps,
        "span": span,
        "coords": coords,
        "seed": seed,
        "split": split,
        "batches": used,
        "batch_size": size,
        "samples": min(len(dataset), used * size),
        "loss": loss_name,
        "one_d": one_d,
        "params": list(d1),
        "param_count": sum(t.numel() for t in d1.values()),
        "cosine": cosine(d1, d2),
        "centre": float(values[steps // 2, steps // 2]) if steps % 2 else None,
        "min": float(np.nanmin(values)),
        "max": float(np.nanmax(values)),
        "processes": state.num_processes,
    }
    return values, record


def sidecar_path(out: str | os.PathLike) -> Path:
    """The JSON next to a surface: ``s.npy`` -> ``s.json``.

    >>> str(sidecar_path("runs/s.npy")), str(sidecar_path("s.data"))
    ('runs/s.json', 's.data.json')
    """
    out = Path(out)
    return out.with_suffix(".json") if out.suffix == ".npy" else out.with_name(out.name + ".json")


def save_surface(values: np.ndarray, record: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write the surface (``np.save`` format) and its JSON sidecar, each atomically; returns ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, values)
    write_text_atomic(sidecar_path(out), json.dumps(record, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------------ plot
def plot(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    log: bool = False,
    vmax: float | None = None,
    levels: int = 30,
) -> Path:
    """Draw a surface file as a 3-D surface and a contour plot side by side; saved atomically (PNG).

    The axes come from the sidecar (``coords``), else ``[-1, 1]``. ``vmax`` clips the loss from above
    (far from the centre it grows by orders of magnitude), ``log`` draws ``log10`` of the loss.

    Example: ``plot("surface.npy", "landscape.png", vmax=5)``
    """
    from matplotlib.figure import Figure  # import cost: only when plotting

    values = np.load(path, allow_pickle=False)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"{str(path)!r} holds a {values.shape} array, not a steps x steps surface")
    side = sidecar_path(path)
    record = json.loads(side.read_text()) if side.is_file() else {}
    n = values.shape[0]
    coords = np.asarray(record.get("coords") or np.linspace(-1, 1, n), dtype=float)
    z = np.minimum(values, vmax) if vmax is not None else values.copy()
    label = "loss"
    if log:
        z = np.log10(np.maximum(z, np.finfo(float).tiny))
        label = "log10 loss"
    x, y = np.meshgrid(coords, coords, indexing="ij")  # z[i, j] at (x_i, y_j)
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax3 = fig.add_subplot(1, 2, 1, projection="3d")
    ax3.plot_surface(x, y, z, cmap="viridis", linewidth=0, antialiased=True)
    ax3.set_xlabel("d1")
    ax3.set_ylabel("d2")
    ax3.set_zlabel(label)
    ax = fig.add_subplot(1, 2, 2)
    contours = ax.contour(x, y, z, levels=levels, cmap="viridis")
    ax.clabel(contours, fontsize=6)
    ax.plot([0], [0], marker="+", color="k", markersize=10)
    ax.set_xlabel("d1")
    ax.set_ylabel("d2")
    ax.set_aspect("equal")
    title = record.get("model", Path(path).stem)
    if record:
        title += (
            f" ({record.get('loss', 'loss')}, {record.get('split', '')} {record.get('samples', '')} samples)"
        )
    fig.suptitle(title, fontsize=9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return out


# ------------------------------------------------------------------------------------------ CLI
def _batches(text: str) -> int | None:
    if text == "all":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1, or 'all'")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line: ``render`` and ``plot``.

    >>> parser().parse_args(["render", "run", "--out", "s.npy", "--steps", "5"]).steps
    5
    """
    p = argparse.ArgumentParser(
        prog="python -m timm_overparam.research.landscape",
        description="Loss landscapes of train.py runs (Li et al. 2018 filter-normalised directions).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="compute a surface (works under accelerate launch)")
    r.add_argument("run", help="a run folder (its checkpoint 'last') or a checkpoint folder of a run")
    r.add_argument(
        "--out", required=True, help="the surface file (.npy); a .json sidecar is written next to it"
    )
    r.add_argument("--steps", type=int, default=41, help="grid points per axis (default 41)")
    r.add_argument("--span", type=float, default=1.0, help="the grid covers [-span, span]^2 (default 1)")
    r.add_argument(
        "--batches", type=_batches, default=4, help="data batches per grid point, or 'all' (default 4)"
    )
    r.add_argument("-b", "--batch-size", type=int, help="batch size (default: the run's)")
    r.add_argument(
        "--split", choices=("train", "validation"), default="train", help="the data (default train)"
    )
    r.add_argument(
        "--params",
        action="append",
        metavar="PATTERN",
        help="fnmatch pattern(s) of parameter names, e.g. 'blocks.*' (repeatable or comma-separated; "
        "default: every trainable float parameter)",
    )
    r.add_argument("--point", help="subspace models: the point (0.5; 0.2:0.3:0.5; default: the centre)")
    r.add_argument(
        "--weights",
        choices=WEIGHTS,
        default="stock",
        help="op/subspace models: the stock weights (collapsed / extracted point; default) or the model's "
        "own tensors (factors / vertices)",
    )
    r.add_argument("--one-d", choices=ONE_D, default="zero", help="1-D tensors: left out (default) or moved")
    r.add_argument("--seed", type=int, default=0, help="seed of the directions (default 0)")
    r.add_argument(
        "--bn-recal-batches",
        type=int,
        help="subspace models: BatchNorm recalibration batches at the point (default: the run's; 0: none)",
    )
    r.add_argument("--smoothing", type=float, help="label smoothing of the loss (default: the run's)")
    r.add_argument("--use-ema", action="store_true", help="the checkpoint's EMA weights")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    q = sub.add_parser("plot", help="draw a surface file: 3-D surface and contours")
    q.add_argument("surface", help="a surface file written by render")
    q.add_argument("--out", required=True, help="the image (PNG)")
    q.add_argument("--log", action="store_true", help="draw log10 of the loss")
    q.add_argument("--vmax", type=float, help="clip the loss at this value")
    q.add_argument("--levels", type=int, default=30, help="contour levels (default 30)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m timm_overparam.research.landscape render|plot ...``."""
    args = parser().parse_args(argv)
    try:
        if args.command == "plot":
            print(plot(args.surface, args.out, log=args.log, vmax=args.vmax, levels=args.levels))
            return
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK) or out.is_dir():
            raise ValueError(f"--out {args.out!r}: cannot write a file there")
        values, record = render(
            args.run,
            steps=args.steps,
            span=args.span,
            batches=args.batches,
            params=args.params,
            point=_parse_point(args.point),
            weights=args.weights,
            one_d=args.one_d,
            seed=args.seed,
            split=args.split,
            batch_size=args.batch_size,
            bn_recal_batches=args.bn_recal_batches,
            smoothing=args.smoothing,
            use_ema=args.use_ema,
            progress=not args.no_progress,
        )
        if _processes().is_main_process:
            save_surface(values, record, out)
            print(f"{out} ({record['steps']}x{record['steps']}, centre {record['centre']}, {record['loss']})")
    except (ValueError, TypeError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":  # the package import above registered the derived models
    main()

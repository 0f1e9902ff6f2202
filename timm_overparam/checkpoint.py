"""Training checkpoints: accelerate ``save_state`` folders written atomically, ``last``/``best`` links, history.

An experiment folder holds ``checkpoint-<epoch>/`` folders (accelerate's model.safetensors,
optimizer, RNG states; ``ema.safetensors``; ``trainer_state.json``) and two symbolic links,
``last`` and ``best``. A checkpoint is written into a hidden temporary folder and renamed into
place once complete; a link is replaced by renaming a new link over it. A run killed at any moment
therefore leaves ``last`` pointing at a complete checkpoint (the previous one, or the new one).
Nothing is unpickled: weights are safetensors, the state is JSON, and accelerate reads its
optimizer and RNG files with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch import nn

from timm_overparam.weights import load_weights, save_weights

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
MODEL_FILE = "model.safetensors"


@dataclass
class TrainerState:
    """What a checkpoint knows besides tensors: the run's model, progress and metric."""

    model: str
    epoch: int  # epochs completed
    step: int  # optimizer updates completed
    metric: float | None = None
    eval_metric: str = "top1"
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def read_state(folder: str | os.PathLike) -> TrainerState:
    """The ``trainer_state.json`` of a checkpoint folder; a missing or foreign one is a ValueError.

    Example: ``read_state("output/train/exp/last").epoch``
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"checkpoint folder {str(folder)!r} does not exist")
    path = folder / STATE_FILE
    try:
        return TrainerState(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise ValueError(f"{str(folder)!r} is not a train.py checkpoint: {STATE_FILE} is missing") from None
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{str(path)!r} is damaged or foreign: {e}") from e


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _link(folder: Path, name: str, target: str) -> None:
    """Point ``folder/name`` at ``target`` (a sibling) by renaming a fresh link over the old one."""
    tmp = folder / f".{name}.link"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, folder / name)


class Checkpoints:
    """Saves and restores training state in an experiment folder (see the module docstring).

    ``decreasing``: a lower metric is better (``loss``, ``ece``). ``history``: checkpoint folders
    kept besides ``last`` and ``best``, the best ones by metric (timm's ``--checkpoint-hist``).

    Example: ``Checkpoints(accelerator, "output/train/exp", decreasing=False, history=3).save(state)``
    """

    def __init__(
        self, accelerator: Accelerator, folder: str | os.PathLike, decreasing: bool, history: int
    ) -> None:
        if history < 1:
            raise ValueError(f"checkpoint history must be >= 1, got {history}")
        self.accelerator = accelerator
        self.folder = Path(folder)
        self.decreasing = decreasing
        self.history = history

    def _better(self, a: float | None, b: float | None) -> bool:
        if a is None:
            return False
        return b is None or (a < b if self.decreasing else a > b)

    def best_metric(self) -> float | None:
        """The metric of the checkpoint ``best`` points at (None before the first save)."""
        best = self.folder / "best"
        return read_state(best).metric if best.exists() else None

    def save(self, state: TrainerState, ema: nn.Module | None = None) -> bool:
        """Write ``checkpoint-<epoch>``, move ``last`` (and ``best`` if the metric improved); prune.

        Called on every process (accelerate writes each process's RNG state). Returns True when
        this checkpoint became ``best``.
        """
        acc = self.accelerator
        name = f"checkpoint-{state.epoch}"
        tmp = self.folder / f".{name}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            self.folder.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        improved = self._better(state.metric, self.best_metric())
        if acc.is_main_process:
            if ema is not None:
                save_weights(ema, tmp / EMA_FILE, parametrized=True)
            _write_json(tmp / STATE_FILE, asdict(state))
        acc.wait_for_everyone()
        if acc.is_main_process:
            final = self.folder / name
            if final.exists():  # the same epoch saved again (a resumed run): keep only the new one
                old = self.folder / f".{name}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old)
            else:
                os.replace(tmp, final)
            _link(self.folder, "last", name)
            if improved:
                _link(self.folder, "best", name)
            self._prune()
        acc.wait_for_everyone()
        return improved

    def _prune(self) -> None:
        keep = {
            os.readlink(self.folder / link) for link in ("last", "best") if (self.folder / link).is_symlink()
        }
        scored = []
        for path in self.folder.glob("checkpoint-*"):
            state = read_state(path)
            if state.metric is not None:
                scored.append((state.metric if self.decreasing else -state.metric, -state.epoch, path.name))
        keep |= {name for *_, name in sorted(scored)[: self.history]}
        for path in self.folder.glob("checkpoint-*"):
            if path.name not in keep:
                shutil.rmtree(path)

    def load(
        self, folder: str | os.PathLike, model: nn.Module, model_name: str, ema: nn.Module | None = None
    ) -> TrainerState:
        """Restore model, optimizer and RNG states (accelerate), the EMA and the trainer state.

        The checkpoint must come from the same ``--model``; its tensors are checked before loading,
        so a truncated or foreign file is a ValueError naming it, never a half-loaded model.
        """
        folder = Path(folder)
        state = read_state(folder)
        if state.model != model_name:
            raise ValueError(
                f"{str(folder)!r} was trained as {state.model!r}, not {model_name!r}: resume with --model {state.model}"
            )
        load_weights(
            self.accelerator.unwrap_model(model), folder / MODEL_FILE
        )  # checks every key and shape, then loads
        try:
            self.accelerator.load_state(str(folder))
        except Exception as e:  # accelerate's own files (optimizer.bin, random_states_*.pkl)
            raise ValueError(f"cannot restore {str(folder)!r}: {type(e).__name__}: {e}") from e
        if ema is not None:
            if not (folder / EMA_FILE).is_file():
                raise ValueError(f"{str(folder)!r} has no {EMA_FILE}: it was trained without --model-ema")
            load_weights(ema, folder / EMA_FILE)
        return state

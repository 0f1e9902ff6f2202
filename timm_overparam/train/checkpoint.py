"""Training checkpoints: accelerate ``save_state`` folders written atomically, ``last``/``best`` links, history.

An experiment folder holds ``checkpoint-<epoch>/`` folders (accelerate's model.safetensors,
optimizer, RNG states; ``ema.safetensors``; ``trainer_state.json``) and two symbolic links,
``last`` and ``best``. A checkpoint is written into a hidden temporary folder and renamed into
place once complete; a link is replaced by renaming a new link over it. A run killed at any moment
therefore leaves ``last`` pointing at a complete checkpoint (the previous one, or the new one); a
save that fails (a full disk) removes its temporary folder and raises one error.

``callbacks.json`` (when the run has callbacks) holds their ``state_dict()`` as JSON.
``trainer_state.json`` is written last and records the sha256 of every other file of the
checkpoint (``files``). Resuming checks every field of the state, that each file this process
needs is present, recorded, unchanged and loadable, and that accelerate really restored the RNG
states; validate.py checks the weights file it reads. Nothing is unpickled: weights are
safetensors, the state is JSON, and accelerate reads its optimizer and RNG files with
``torch.load(weights_only=True)``.

Under FSDP2 (sharded parameters) accelerate writes the model and optimizer as sharded
``torch.distributed.checkpoint`` folders (``pytorch_model_fsdp_0/``, ``optimizer_0/``: each process
its own shard, restored sharded on resume), and the main process also writes the full weights as
``model.safetensors`` (from the run's evaluation replica, ``Checkpoints.save(full=...)``), so that
validate.py, ``--initial-checkpoint`` and the key check of a resume read every checkpoint alike.
The sha256 of every file, those inside the sharded folders too, is recorded and checked.

Under DeepSpeed (ZeRO stages 1 and 2) accelerate has DeepSpeed's engine write ``pytorch_model/``
(``mp_rank_00_model_states.pt``, the module; ``zero_pp_rank_<i>_mp_rank_00_optim_states.pt``, each
process's optimizer partition, which every process reads on resume), and the main process writes
``model.safetensors`` of the model's whole weights, as under FSDP2. DeepSpeed reads its files with
``torch.load(weights_only=False)``: before it does, the main process checks that each has its
recorded sha256 and loads with ``weights_only=True`` allowing only DeepSpeed's three data classes
(``DEEPSPEED_DATA_CLASSES``), so the bytes DeepSpeed unpickles hold tensors, containers and those.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import random
import re
import shutil
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, is_cuda_available, is_xpu_available
from accelerate.utils import load as accelerate_load
from accelerate.utils.constants import FSDP_MODEL_NAME, MODEL_NAME, OPTIMIZER_NAME
from safetensors import SafetensorError
from torch import nn

from timm_overparam.core.atomic import write_text_atomic
from timm_overparam.core.weights import load_weights, save_weights

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
MODEL_FILE = "model.safetensors"
SCALER_FILE = "scaler.pt"
CALLBACKS_FILE = "callbacks.json"
RNG_PREFIX = "random_states_"
DEEPSPEED_MODULE_FILE = "mp_rank_00_model_states.pt"  # in each of DeepSpeed's pytorch_model*/ folders
# what DeepSpeed pickles into its ZeRO stage 1/2 files besides tensors, containers and numbers
DEEPSPEED_DATA_CLASSES = (
    "deepspeed.runtime.fp16.loss_scaler:LossScaler",
    "deepspeed.runtime.zero.config:ZeroStageEnum",
    "deepspeed.utils.tensor_fragment:fragment_address",
)
_CHUNK = 1 << 22  # bytes hashed at a time
# what a full disk raises: OSError (open, write), RuntimeError (torch.save: "[enforce fail at
# inline_container.cc:672] . unexpected pos"), SafetensorError ("Error while serializing: I/O error")
_WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


@dataclass
class TrainerState:
    """What a checkpoint knows besides tensors: the run's model, progress, metric and file hashes.

    ``files`` (path inside the checkpoint folder -> sha256) is filled in by ``Checkpoints.save``.
    """

    model: str
    epoch: int  # epochs completed
    step: int  # optimizer updates completed
    metric: float | None = None
    eval_metric: str = "top1"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file as hex, read once in 4 MiB chunks.

    Example: ``file_sha256("output/train/exp/last/model.safetensors")``
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_EDITED = "damaged or edited by hand; resume from another checkpoint-<n> of the experiment"


def _bad(path: Path, name: str, value: Any, wanted: str, hint: str = _EDITED) -> ValueError:
    return ValueError(f"{str(path)!r}: field {name!r} must be {wanted}, got {value!r} ({hint})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked(data: Any, path: Path, hint: str = _EDITED) -> TrainerState:
    """``data`` (a parsed trainer_state.json) as a TrainerState, every field checked; ``hint``
    ends the message of a bad field."""
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} is damaged or foreign: not a JSON object")
    names = [f.name for f in fields(TrainerState)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{str(path)!r} is damaged or foreign: unknown field(s) {unknown}")
    if "files" not in data and set(names) - {"files"} <= set(data):
        raise ValueError(
            f"{str(path)!r} has no 'files' (sha256 of each file): written by an older timm_overparam, "
            "its tensors cannot be verified; train again"
        )
    missing = [n for n in names if n not in data]
    if missing:
        raise ValueError(f"{str(path)!r} is damaged or foreign: missing field(s) {missing}")
    for name in ("model", "eval_metric"):
        if not isinstance(data[name], str) or not data[name]:
            raise _bad(path, name, data[name], "a non-empty string", hint=hint)
    for name in ("epoch", "step"):
        if not _is_int(data[name]) or data[name] < 0:
            raise _bad(path, name, data[name], "an integer >= 0", hint=hint)
    metric = data["metric"]
    if metric is not None:
        if isinstance(metric, bool) or not isinstance(metric, (int, float)) or not math.isfinite(metric):
            raise _bad(path, "metric", metric, "a finite number or null", hint=hint)
        metric = float(metric)
    kwargs = data["model_kwargs"]
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise _bad(path, "model_kwargs", kwargs, "an object (keyword -> value)", hint=hint)
    files = data["files"]
    if not isinstance(files, dict):
        raise _bad(path, "files", files, "an object (file name -> sha256)", hint=hint)
    for name, digest in files.items():
        if name == STATE_FILE or "\\" in name or any(part in ("", ".", "..") for part in name.split("/")):
            raise _bad(path, "files", name, "relative paths of files inside the checkpoint folder", hint=hint)
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise _bad(path, f"files.{name}", digest, "a sha256 in hex (64 characters)", hint=hint)
    return TrainerState(**{**data, "metric": metric})


def read_state(folder: str | os.PathLike) -> TrainerState:
    """The checked ``trainer_state.json`` of a checkpoint folder.

    A missing, foreign or damaged file, or any field of the wrong type or range (``epoch: -2``,
    ``epoch: "4"``, a non-finite metric, an epoch other than the ``checkpoint-<n>`` folder's) is a
    ValueError that names the file, the field and the value.

    Example: ``read_state("output/train/exp/last").epoch``
    """
    folder = _real(folder)
    if not folder.is_dir():
        raise ValueError(f"checkpoint folder {str(folder)!r} does not exist")
    path = folder / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{str(folder)!r} is not a train.py checkpoint: {STATE_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise ValueError(f"{str(path)!r} is damaged or foreign: {e}") from e
    state = _checked(data, path)
    numbered = re.fullmatch(r"checkpoint-(\d+)", folder.resolve().name)
    if numbered and int(numbered[1]) != state.epoch:
        raise _bad(path, "epoch", state.epoch, f"{numbered[1]}, the number of its folder {numbered[0]}")
    return state


def verify_files(folder: str | os.PathLike, names: list[str], state: TrainerState | None = None) -> None:
    """Check that each of ``names`` is in the checkpoint folder with the sha256 its state records.

    Reads each file once. A missing, unrecorded or changed file (a bit flip, a truncation, a copy
    from another run) is a ValueError naming it.

    Example: ``verify_files("output/train/exp/last", ["model.safetensors"])``
    """
    folder = _real(folder)
    state = state or read_state(folder)
    for name in names:
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{str(path)!r} is missing: the checkpoint is incomplete")
        if name not in state.files:
            raise ValueError(
                f"{str(path)!r} is not recorded in {STATE_FILE} (files): it was not written with this "
                "checkpoint (copied in from elsewhere?)"
            )
        if file_sha256(path) != state.files[name]:
            raise ValueError(
                f"{str(path)!r} does not match the sha256 recorded in {STATE_FILE}: the file is damaged "
                "(bit flip, truncation) or was replaced; use another checkpoint-<n> of the experiment"
            )


def read_callbacks(folder: str | os.PathLike) -> list[dict[str, Any]] | None:
    """The callback states of a checkpoint (``callbacks.json``, sha256 checked), or None if it has none.

    Example: ``read_callbacks("output/train/exp/last")``
    """
    folder = _real(folder)
    if not (folder / CALLBACKS_FILE).exists():
        return None
    verify_files(folder, [CALLBACKS_FILE])
    path = folder / CALLBACKS_FILE
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path)!r} is damaged: {e}") from e
    if not isinstance(data, list) or not all(isinstance(d, dict) and "state" in d for d in data):
        raise ValueError(f"{str(path)!r} is damaged or foreign: not a list of {{name, state}} objects")
    return data


def _real(folder: str | os.PathLike) -> Path:
    """``last``/``best`` as the checkpoint they point at: errors name it, and every file is read
    from that one checkpoint even if the link moves meanwhile."""
    folder = Path(folder)
    return folder.resolve() if folder.is_symlink() else folder


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False))


def _link(folder: Path, name: str, target: str) -> None:
    """Point ``folder/name`` at ``target`` (a sibling) by renaming a fresh link over the old one."""
    tmp = folder / f".{name}.link"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(target, tmp)
        os.replace(tmp, folder / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _first_error(error: BaseException | None) -> str | None:
    """Share one process's error with all of them (a collective call: every process makes it)."""
    messages = gather_object([None if error is None else f"{type(error).__name__}: {error}"])
    return next((m for m in messages if m is not None), None)


def _rng_keys() -> list[str]:
    """The keys accelerate sets from a random-states file on this machine (it skips a file that
    lacks one, silently)."""
    keys = ["random_state", "numpy_random_seed", "torch_manual_seed"]
    if is_xpu_available():
        keys.append("torch_xpu_manual_seed")
    if is_cuda_available():
        keys.append("torch_cuda_manual_seed")
    return keys


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether ``accelerator`` shards the model's parameters (FSDP2; accelerate >= 1.6).

    Example: ``is_sharded(Accelerator())`` is False
    """
    return bool(getattr(accelerator, "is_fsdp2", False))


def is_deepspeed(accelerator: Accelerator) -> bool:
    """Whether ``accelerator`` runs DeepSpeed (whose engine writes its own checkpoint files).

    Example: ``is_deepspeed(Accelerator())`` is False
    """
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def check_deepspeed_file(path: str | os.PathLike) -> None:
    """Load a DeepSpeed checkpoint file without pickle's freedom: ``torch.load(weights_only=True)``
    allowing only ``DEEPSPEED_DATA_CLASSES``; a ValueError names anything else it holds.

    Example: ``check_deepspeed_file("checkpoint-3/pytorch_model/mp_rank_00_model_states.pt")``
    """
    allowed: list = [set]  # a container; torch allows it by default only from 2.5 (DeepSpeed saves sets)
    for name in DEEPSPEED_DATA_CLASSES:
        module, cls = name.split(":")
        allowed.append(getattr(importlib.import_module(module), cls))
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; before, process-wide
    try:
        with scoped(allowed) if scoped is not None else contextlib.nullcontext():
            if scoped is None:
                torch.serialization.add_safe_globals(allowed)
            # mmap: a big model's optimizer partitions need not fit in memory (zip files only)
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))  # torch's weights_only refusal
        why = (
            f"it holds {found[1]}"
            if found
            else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        )
        raise ValueError(
            f"{str(path)!r} is not a DeepSpeed ZeRO checkpoint file this project resumes (damaged or "
            f"foreign): {why}"
        ) from e


def _same_numpy_state(a: Any, b: Any) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


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

    def _best(self) -> tuple[float | None, bool]:
        """The metric of ``best`` and whether ``best`` points at a readable checkpoint."""
        best = self.folder / "best"
        if not best.is_symlink():
            return None, True
        try:
            return read_state(best).metric, True
        except ValueError as e:
            warnings.warn(
                f"`best` points at a damaged checkpoint ({e}); the next checkpoint with a metric becomes best",
                stacklevel=3,
            )
            return None, False

    def best_metric(self) -> float | None:
        """The metric of the checkpoint ``best`` points at (None before the first save, or when
        that checkpoint is damaged: a warning says so)."""
        return self._best()[0]

    def save(
        self,
        state: TrainerState,
        ema: nn.Module | None = None,
        callbacks: list[dict[str, Any]] | None = None,
        full: nn.Module | None = None,
    ) -> bool:
        """Write ``checkpoint-<epoch>``, move ``last`` (and ``best`` if the metric improved); prune.

        ``callbacks``: the main process's callback states (JSON data), written as ``callbacks.json``.
        ``full``: an unsharded copy of a sharded (FSDP2) model, written as ``model.safetensors``
        (under DeepSpeed, whose engine writes no such file, the model itself is).

        Called on every process (accelerate writes each process's RNG state). Returns True when
        this checkpoint became ``best``. A write that fails (full disk, I/O error) removes the
        temporary folder and raises OSError on every process; ``last`` stays where it was.
        """
        acc = self.accelerator
        if full is None and is_deepspeed(acc):
            full = acc.unwrap_model(acc._models[0], keep_torch_compile=False)
        state = replace(state, files={})
        _checked(asdict(state), self.folder / f"checkpoint-{state.epoch}" / STATE_FILE, "nothing was written")
        name = f"checkpoint-{state.epoch}"
        tmp = self.folder / f".{name}.tmp"
        best_metric, best_ok = self._best()
        improved = self._better(state.metric, best_metric)
        last = self.folder / "last"
        previous = os.readlink(last) if last.is_symlink() else None
        try:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                self.folder.mkdir(parents=True, exist_ok=True)
            acc.wait_for_everyone()
            error: BaseException | None = None
            try:
                acc.save_state(str(tmp), safe_serialization=True)
            except _WRITE_ERRORS as e:
                error = e
            message = _first_error(error)  # also the barrier: every process's files are written
            if message is None and acc.is_main_process:
                try:
                    self._finish(state, tmp, name, ema, improved, best_ok, callbacks, full)
                except _WRITE_ERRORS as e:
                    error = e
            message = message or _first_error(error)
        except BaseException:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if message is not None:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            now = os.readlink(last) if last.is_symlink() else None
            kept = (
                "no checkpoint was saved before"
                if now is None
                else f"`last` -> {now} is untouched"
                if now == previous
                else f"`last` -> {now} is complete"
            )
            raise OSError(
                f"cannot write checkpoint {str(self.folder / name)!r}: {message} (disk full? free space or "
                f"use another --output); the temporary folder is removed and {kept}"
            ) from error
        if acc.is_main_process:
            self._prune()
        acc.wait_for_everyone()
        return improved

    def _finish(
        self,
        state: TrainerState,
        tmp: Path,
        name: str,
        ema: nn.Module | None,
        improved: bool,
        best_ok: bool,
        callbacks: list[dict[str, Any]] | None = None,
        full: nn.Module | None = None,
    ) -> None:
        """Main process: full weights (FSDP2, DeepSpeed), EMA, callbacks, hashes and state into ``tmp``, rename it
        into place, move the links."""
        if full is not None:
            save_weights(full, tmp / MODEL_FILE, parametrized=True)
        if ema is not None:
            save_weights(ema, tmp / EMA_FILE, parametrized=True)
        if callbacks is not None:
            write_text_atomic(tmp / CALLBACKS_FILE, json.dumps(callbacks, indent=1))
        files = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        _write_json(tmp / STATE_FILE, asdict(replace(state, files=files)))  # last: marks it complete
        final = self.folder / name
        if final.exists():  # the same epoch saved again (a resumed run): keep only the new one
            old = self.folder / f".{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _link(self.folder, "last", name)
        if improved:
            _link(self.folder, "best", name)
        elif not best_ok:  # never leave `best` at a damaged checkpoint
            (self.folder / "best").unlink(missing_ok=True)

    def _prune(self) -> None:
        """Delete checkpoints beyond the history; skip (keep, with a warning) damaged ones."""
        keep = {
            os.readlink(self.folder / link) for link in ("last", "best") if (self.folder / link).is_symlink()
        }
        scored, folders = [], [p for p in sorted(self.folder.glob("checkpoint-*")) if p.is_dir()]
        for path in folders:
            try:
                state = read_state(path)
            except ValueError as e:
                warnings.warn(f"left a damaged checkpoint alone (delete it by hand): {e}", stacklevel=3)
                keep.add(path.name)
                continue
            if state.metric is not None:
                scored.append((state.metric if self.decreasing else -state.metric, -state.epoch, path.name))
        keep |= {name for *_, name in sorted(scored)[: self.history]}
        stale = [*self.folder.glob(".checkpoint-*.tmp"), *self.folder.glob(".checkpoint-*.old")]
        for path in [p for p in folders if p.name not in keep] + stale:  # stale: left by killed runs
            try:
                shutil.rmtree(path)
            except OSError as e:
                warnings.warn(f"could not delete old checkpoint {str(path)!r}: {e}", stacklevel=3)

    def _needed(self, with_ema: bool, state: TrainerState) -> tuple[list[str], list[str]]:
        """Files this process reads on a resume: (shared ones, verified by the main process; its own)."""
        acc = self.accelerator
        if is_sharded(acc):  # the full weights, and the recorded files of accelerate's sharded folders
            folders = [f"{FSDP_MODEL_NAME}_{i}" for i in range(len(acc._models))]
            folders += [f"{OPTIMIZER_NAME}_{i}" for i in range(len(acc._optimizers))]
            shared = [MODEL_FILE] + [f"{f}/.metadata" for f in folders]
            shared += sorted(n for n in state.files if n.split("/")[0] in folders and n not in shared)
        elif is_deepspeed(acc):  # the full weights, and the recorded files of DeepSpeed's folders
            folders = [MODEL_NAME if i == 0 else f"{MODEL_NAME}_{i}" for i in range(len(acc._models))]
            shared = [MODEL_FILE] + [f"{f}/{DEEPSPEED_MODULE_FILE}" for f in folders]
            shared += sorted(n for n in state.files if n.split("/")[0] in folders and n not in shared)
        else:
            shared = [MODEL_FILE if i == 0 else f"model_{i}.safetensors" for i in range(len(acc._models))]
            shared += [
                "optimizer.bin" if i == 0 else f"optimizer_{i}.bin" for i in range(len(acc._optimizers))
            ]
        if acc.scaler is not None:
            shared.append(SCALER_FILE)
        if with_ema:
            shared.append(EMA_FILE)
        return shared, [f"{RNG_PREFIX}{acc.process_index}.pkl"]

    def _check_files(self, folder: Path, state: TrainerState, with_ema: bool) -> dict[str, Any]:
        """Every file this process needs: present, unchanged, loadable without pickle; returns its
        RNG states (checked against what accelerate restores)."""
        shared, own = self._needed(with_ema, state)
        if with_ema and not (folder / EMA_FILE).is_file():
            raise ValueError(f"{str(folder)!r} has no {EMA_FILE}: it was trained without --model-ema")
        saved = sorted(n for n in state.files if n.startswith(RNG_PREFIX))
        for name in shared + own:
            if not (folder / name).is_file():
                hint = ""
                if name.startswith(RNG_PREFIX):
                    hint = f" (the checkpoint was saved by {len(saved)} process(es): resume with as many)"
                elif name == SCALER_FILE:
                    hint = " (it was saved without float16 --amp: resume with the same --amp settings)"
                raise ValueError(f"{str(folder / name)!r} is missing: the checkpoint is incomplete{hint}")
        verify_files(folder, (shared if self.accelerator.is_main_process else []) + own, state)
        if is_deepspeed(self.accelerator) and self.accelerator.is_main_process:
            for name in shared:
                if name.endswith(".pt"):
                    check_deepspeed_file(folder / name)
        accelerate_owns = not (is_sharded(self.accelerator) or is_deepspeed(self.accelerator))
        for i, opt in enumerate(self.accelerator._optimizers if accelerate_owns else []):
            path = folder / ("optimizer.bin" if i == 0 else f"optimizer_{i}.bin")
            try:
                saved_opt = accelerate_load(path, map_location="cpu", mmap=True)  # weights_only=True
                if not isinstance(saved_opt["state"], dict):
                    raise TypeError("its 'state' is not a dict")
                sizes = [len(g["params"]) for g in saved_opt["param_groups"]]
            except Exception as e:
                raise ValueError(
                    f"{str(path)!r} is not a loadable optimizer state (damaged or foreign): {type(e).__name__}: {e}"
                ) from e
            if sizes != [len(g["params"]) for g in opt.param_groups]:
                raise ValueError(
                    f"{str(path)!r} holds parameter groups of sizes {sizes}, the optimizer's are "
                    f"{[len(g['params']) for g in opt.param_groups]}: another model or --opt settings"
                )
        path = folder / own[0]
        try:
            rng = accelerate_load(path)  # torch.load(weights_only=True)
            if not isinstance(rng, dict):
                raise TypeError(f"a {type(rng).__name__}, not a dict")
            missing = [k for k in _rng_keys() if k not in rng]
            if missing:
                raise KeyError(f"no {missing} (saved on a machine without that device?)")
            if not isinstance(rng["torch_manual_seed"], torch.Tensor):
                raise TypeError("torch_manual_seed is not a tensor")
        except Exception as e:
            raise ValueError(
                f"{str(path)!r} is not a loadable random-states file (damaged or foreign): {type(e).__name__}: {e}"
            ) from e
        return rng

    def _check_restored(self, path: Path, rng: dict[str, Any]) -> None:
        """accelerate logs a failed RNG restore at info level and goes on: compare instead."""
        same = (
            random.getstate() == rng["random_state"]
            and _same_numpy_state(np.random.get_state(), rng["numpy_random_seed"])
            and torch.equal(torch.get_rng_state(), rng["torch_manual_seed"])
        )
        if same and "torch_cuda_manual_seed" in rng and is_cuda_available():
            saved = rng["torch_cuda_manual_seed"]  # one state per device of the saving process
            same = len(saved) <= torch.cuda.device_count() and all(
                torch.equal(torch.cuda.get_rng_state(i), s) for i, s in enumerate(saved)
            )
        if not same:
            raise ValueError(
                f"{str(path)!r}: accelerate could not restore the random states from it (damaged or foreign); "
                "the resumed run would not reproduce the original: use another checkpoint-<n>"
            )

    def load(
        self,
        folder: str | os.PathLike,
        model: nn.Module,
        model_name: str,
        ema: nn.Module | None = None,
        full: nn.Module | None = None,
    ) -> TrainerState:
        """Restore model, optimizer and RNG states (accelerate), the EMA and the trainer state.

        The checkpoint must come from the same ``--model``. Every field of its state, the names
        and shapes of its tensors and every file this process needs (present, sha256 as recorded,
        loadable without pickle) are checked before accelerate restores anything, and the RNG
        states after: a missing, damaged or foreign file is a ValueError naming it, never a
        silently different run. Call it on every process. ``full``: the unsharded copy of a sharded
        (FSDP2) model, which the full weights are checked and loaded into.

        Example: ``Checkpoints(acc, "output/train/exp", False, 2).load("output/train/exp/last", model, "resnet18_op3")``
        """
        folder = _real(folder)
        state = read_state(folder)
        if state.model != model_name:
            raise ValueError(
                f"{str(folder)!r} was trained as {state.model!r}, not {model_name!r}: resume with --model {state.model}"
            )
        unpickled = sorted(p.name for p in folder.glob("custom_checkpoint_*.pkl"))
        if unpickled:  # accelerate reads these with weights_only=False; this project never writes them
            raise ValueError(f"{str(folder / unpickled[0])!r} is foreign: train.py checkpoints have none")
        # every key and shape first (a truncated or foreign file names the fix), then the rest
        load_weights(
            full or self.accelerator.unwrap_model(model, keep_torch_compile=False), folder / MODEL_FILE
        )
        rng: dict[str, Any] = {}
        error: BaseException | None = None
        try:
            rng = self._check_files(folder, state, ema is not None)
        except (ValueError, OSError) as e:  # OSError: a file that cannot be read
            error = e
        message = _first_error(error)  # a damaged file on one process stops them all
        if message is not None:
            raise error if error is not None else ValueError(f"another process: {message}")
        try:
            self.accelerator.load_state(str(folder))
        except Exception as e:  # accelerate's own files (optimizer.bin, random_states_*.pkl)
            raise ValueError(f"cannot restore {str(folder)!r}: {type(e).__name__}: {e}") from e
        error = None
        try:
            self._check_restored(folder / f"{RNG_PREFIX}{self.accelerator.process_index}.pkl", rng)
        except ValueError as e:
            error = e
        message = _first_error(error)
        if message is not None:
            raise error if error is not None else ValueError(f"another process: {message}")
        if ema is not None:
            load_weights(ema, folder / EMA_FILE)
        return state

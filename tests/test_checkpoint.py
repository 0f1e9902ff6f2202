"""Checkpoints: checked trainer state, sha256 of every file, refused damaged files, failed saves
that leave nothing behind, pruning past damaged folders."""

import errno
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import load
from test_train import measured, rows, run
from torch import nn

from timm_overparam.core.atomic import write_text_atomic
from timm_overparam.train import checkpoint as ckpt
from timm_overparam.train.checkpoint import (
    Checkpoints,
    TrainerState,
    file_sha256,
    read_state,
)
from timm_overparam.train.cli import parse_args, validate_parser
from timm_overparam.train.validation import validate

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--model", "test_resnet_op2", "-b", "128", "--warmup-epochs", "0", "--lr", "0.1"]
LINE = ["--model", "test_resnet_line", "-b", "128", "--warmup-epochs", "0", "--lr", "0.1"]
LINE += ["--bn-recal-batches", "2", "--eval-points", "0,1"]


def setup(folder: Path, history: int = 2) -> tuple[nn.Module, Checkpoints]:
    """A prepared nn.Linear with an SGD state (momentum buffers) and its Checkpoints."""
    acc = Accelerator(cpu=True)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt = acc.prepare(model, opt)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, Checkpoints(acc, folder, decreasing=False, history=history)


def state(epoch: int, metric: float | None = 0.5) -> TrainerState:
    return TrainerState("lin", epoch, 10 * epoch, metric)


def edit_state(folder: Path, **changes) -> None:
    path = folder / "trainer_state.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def rehash(folder: Path, name: str) -> None:
    """Record the current sha256 of ``name``: a damaged file that the manifest does not catch."""
    path = folder / "trainer_state.json"
    data = json.loads(path.read_text())
    data["files"][name] = file_sha256(folder / name)
    path.write_text(json.dumps(data))


def messages(record: pytest.WarningsRecorder) -> list[str]:
    return [str(w.message) for w in record]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------- the state
def test_saved_state_records_the_sha256_of_every_file(tmp_path):
    model, checkpoints = setup(tmp_path)
    assert checkpoints.save(state(1), ema=nn.Linear(3, 2))
    folder = tmp_path / "checkpoint-1"
    saved = read_state(tmp_path / "last")
    assert saved == TrainerState("lin", 1, 10, 0.5, files=saved.files)
    on_disk = {p.name for p in folder.iterdir()} - {"trainer_state.json"}
    assert (
        set(saved.files)
        == on_disk
        == {
            "model.safetensors",
            "optimizer.bin",
            "random_states_0.pkl",
            "ema.safetensors",
        }
    )
    assert all(file_sha256(folder / n) == h for n, h in saved.files.items())
    checkpoints.load(tmp_path / "last", model, "lin", ema=nn.Linear(3, 2))  # a clean one loads


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("epoch", -2, r"field 'epoch' must be an integer >= 0, got -2"),
        ("epoch", "4", r"field 'epoch' must be an integer >= 0, got '4'"),
        ("epoch", True, r"field 'epoch' must be an integer >= 0, got True"),
        ("epoch", 2, r"field 'epoch' must be 1, the number of its folder checkpoint-1, got 2"),
        ("step", -1, r"field 'step' must be an integer >= 0, got -1"),
        ("step", 1.5, r"field 'step' must be an integer >= 0, got 1.5"),
        ("metric", float("nan"), r"field 'metric' must be a finite number or null, got nan"),
        ("metric", float("inf"), r"field 'metric' must be a finite number or null, got inf"),
        ("metric", "0.5", r"field 'metric' must be a finite number or null, got '0.5'"),
        ("eval_metric", 3, r"field 'eval_metric' must be a non-empty string, got 3"),
        ("model", "", r"field 'model' must be a non-empty string, got ''"),
        ("model_kwargs", [1], r"field 'model_kwargs' must be an object"),
        ("files", ["a"], r"field 'files' must be an object"),
        (
            "files",
            {"../model.safetensors": "0" * 64},
            r"must be relative paths of files.*'../model.safetensors'",
        ),
        ("files", {"optimizer.bin": "abc"}, r"field 'files.optimizer.bin' must be a sha256.*'abc'"),
        ("colour", "red", r"unknown field\(s\) \['colour'\]"),
    ],
)
def test_read_state_checks_every_field(tmp_path, field, value, match):
    setup(tmp_path)[1].save(state(1))
    edit_state(tmp_path / "checkpoint-1", **{field: value})
    with pytest.raises(ValueError, match=r"checkpoint-1/trainer_state.json'.*" + match):
        read_state(tmp_path / "last")


def test_read_state_refuses_missing_fields_and_states_without_hashes(tmp_path):
    setup(tmp_path)[1].save(state(1))
    path = tmp_path / "checkpoint-1" / "trainer_state.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "files"}))
    with pytest.raises(ValueError, match=r"has no 'files' \(sha256 of each file\): written by an older"):
        read_state(tmp_path / "checkpoint-1")
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "step"}))
    with pytest.raises(ValueError, match=r"missing field\(s\) \['step'\]"):
        read_state(tmp_path / "checkpoint-1")
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"trainer_state.json' is damaged or foreign: not a JSON object"):
        read_state(tmp_path / "checkpoint-1")


def test_a_state_that_could_not_be_read_back_is_not_saved(tmp_path):
    _, checkpoints = setup(tmp_path)
    with pytest.raises(
        ValueError, match=r"field 'metric' must be a finite number or null, got nan \(nothing"
    ):
        checkpoints.save(state(1, float("nan")))
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_resume_with_an_edited_epoch_fails_before_writing_anything(tmp_path, one_epoch_copy):
    folder = one_epoch_copy  # one epoch done: `last` -> checkpoint-1
    edit_state(folder / "checkpoint-1", epoch=-2)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    with pytest.raises(
        ValueError, match=r"trainer_state.json': field 'epoch' must be an integer >= 0, got -2"
    ):
        run(tmp_path, *FAST, "--epochs", "3", "--resume", str(folder / "last"))
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    assert yaml.safe_load((folder / "args.yaml").read_text())["epochs"] == 1


# ------------------------------------------------------------------------------- failed saves
@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 832 vs 726"),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
)
def test_a_failed_save_removes_its_temporary_folder_and_keeps_last(tmp_path, monkeypatch, error):
    _, checkpoints = setup(tmp_path)
    checkpoints.save(state(1))
    save_state = Accelerator.save_state

    def disk_full(self, output_dir, **kwargs):  # the disk fills up halfway through the optimizer
        save_state(self, output_dir, **kwargs)
        Path(output_dir, "optimizer.bin").write_bytes(b"partial")
        raise error

    monkeypatch.setattr(Accelerator, "save_state", disk_full)
    with pytest.raises(
        OSError,
        match=r"cannot write checkpoint '.*checkpoint-2': .*(enforce fail|No space left).*\(disk full\? "
        r".*the temporary folder is removed and `last` -> checkpoint-1 is untouched",
    ):
        checkpoints.save(state(2, 0.9))
    assert hidden(tmp_path) == [] and not (tmp_path / "checkpoint-2").exists()
    assert os.readlink(tmp_path / "last") == os.readlink(tmp_path / "best") == "checkpoint-1"
    monkeypatch.undo()
    assert checkpoints.save(state(2, 0.9)) and os.readlink(tmp_path / "last") == "checkpoint-2"


@contextmanager
def file_size_limit(limit: int):
    """Writes past ``limit`` bytes fail with EFBIG, as they would with ENOSPC on a full disk."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize(
    "limit, match",
    [
        (20_000, r"SafetensorError: Error while serializing: (I/O error|IoError)"),  # model.safetensors
        (60_000, r"RuntimeError: \[enforce fail at inline_container.cc"),  # optimizer.bin (torch.save)
    ],
)
def test_a_real_write_failure_leaves_no_temporary_folder(tmp_path, limit, match):
    acc = Accelerator(cpu=True)
    model = nn.Linear(100, 100)  # 40 kB of weights, 80 kB of Adam state
    opt = torch.optim.Adam(model.parameters())
    model, opt = acc.prepare(model, opt)
    model(torch.randn(4, 100)).sum().backward()
    opt.step()
    checkpoints = Checkpoints(acc, tmp_path, decreasing=False, history=2)
    checkpoints.save(state(1))
    with pytest.raises(OSError, match=rf"checkpoint-2': {match}.*`last` -> checkpoint-1 is untouched"):
        with file_size_limit(limit):
            checkpoints.save(state(2))
    assert hidden(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "best",
        "checkpoint-1",
        "last",
    ]
    checkpoints.load(tmp_path / "last", model, "lin")


def test_a_failed_ema_or_state_write_removes_the_temporary_folder(tmp_path, monkeypatch):
    _, checkpoints = setup(tmp_path)
    checkpoints.save(state(1))

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_weights", no_space)
    with pytest.raises(OSError, match=r"cannot write checkpoint .*No space left on device"):
        checkpoints.save(state(2), ema=nn.Linear(3, 2))
    monkeypatch.undo()
    monkeypatch.setattr(ckpt, "_write_json", no_space)
    with pytest.raises(OSError, match=r"cannot write checkpoint .*`last` -> checkpoint-1 is untouched"):
        checkpoints.save(state(2))
    assert hidden(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "best",
        "checkpoint-1",
        "last",
    ]


def test_write_text_atomic_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "args.yaml"
    write_text_atomic(target, "epochs: 1\n")
    with pytest.raises(OSError, match=r"File too large"), file_size_limit(5):  # a full disk
        write_text_atomic(target, "epochs: 2\n")
    assert target.read_text() == "epochs: 1\n" and hidden(tmp_path) == []
    write_text_atomic(target, "a,b\r\n1,2\r\n")  # verbatim: csv's line ends stay
    assert target.read_bytes() == b"a,b\r\n1,2\r\n"


# ---------------------------------------------------------------------- pruning and the links
def test_pruning_skips_damaged_checkpoints(tmp_path):
    _, checkpoints = setup(tmp_path, history=2)
    checkpoints.save(state(1, 0.2))
    checkpoints.save(state(2, 0.3))
    checkpoints.history = 1
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text('{"model": ')  # damaged
    (tmp_path / "checkpoint-7").mkdir()  # foreign: no state at all
    (tmp_path / ".checkpoint-5.tmp").mkdir()  # left by a run killed while saving
    for epoch, metric in ((3, 0.1), (4, 0.05)):
        with pytest.warns(UserWarning) as record:
            checkpoints.save(state(epoch, metric))
        assert messages(record) == [
            f"left a damaged checkpoint alone (delete it by hand): {name!r} is not a train.py checkpoint: "
            "trainer_state.json is missing"
            if name.endswith("7")
            else f"left a damaged checkpoint alone (delete it by hand): {name + '/trainer_state.json'!r} "
            "is damaged or foreign: Expecting value: line 1 column 11 (char 10)"
            for name in (str(tmp_path / "checkpoint-1"), str(tmp_path / "checkpoint-7"))
        ]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best", "checkpoint-1", "checkpoint-2", "checkpoint-4", "checkpoint-7", "last"]
    assert (
        os.readlink(tmp_path / "last") == "checkpoint-4" and os.readlink(tmp_path / "best") == "checkpoint-2"
    )


def test_best_never_points_at_a_damaged_checkpoint(tmp_path):
    _, checkpoints = setup(tmp_path)
    checkpoints.save(state(1, 0.9))
    checkpoints.save(state(2, 0.5))
    (tmp_path / "checkpoint-1" / "trainer_state.json").unlink()
    damaged = "`best` points at a damaged checkpoint"
    with pytest.warns(UserWarning, match=rf"{damaged} \('.*checkpoint-1' is not a train.py checkpoint"):
        assert checkpoints.best_metric() is None
    with pytest.warns(UserWarning) as record:
        assert checkpoints.save(state(3, 0.1))  # worse than 0.9, but the only readable best
    assert messages(record)[0].startswith(damaged)
    assert os.readlink(tmp_path / "best") == "checkpoint-3"
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    with pytest.warns(UserWarning) as record:
        assert not checkpoints.save(state(4, None))  # no metric: cannot become best, so no best
    assert messages(record)[0].startswith(damaged)
    assert not (tmp_path / "best").is_symlink() and os.readlink(tmp_path / "last") == "checkpoint-4"


# ----------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize(
    "name, damage, match",
    [
        ("random_states_0.pkl", "missing", r"random_states_0.pkl' is missing.*saved by 1 process"),
        ("random_states_0.pkl", "truncate", r"random_states_0.pkl' does not match the sha256"),
        ("optimizer.bin", "missing", r"optimizer.bin' is missing"),
        ("optimizer.bin", "flip", r"optimizer.bin' does not match the sha256"),
        ("model.safetensors", "flip", r"model.safetensors' does not match the sha256"),
        ("ema.safetensors", "flip", r"ema.safetensors' does not match the sha256"),
    ],
)
def test_resume_refuses_missing_or_changed_files(tmp_path, name, damage, match):
    model, checkpoints = setup(tmp_path)
    checkpoints.save(state(1), ema=nn.Linear(3, 2))
    path = tmp_path / "checkpoint-1" / name
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # one bit of the last tensor's data
        path.write_bytes(data[:-3] + bytes([data[-3] ^ 0x10]) + data[-2:])
    with pytest.raises(ValueError, match=match):
        checkpoints.load(tmp_path / "last", model, "lin", ema=nn.Linear(3, 2))


def test_every_torch_load_of_a_resume_is_weights_only(tmp_path, monkeypatch):
    """accelerate 1.15 reads optimizer.bin and random_states_*.pkl with weights_only=True: keep it so."""
    model, checkpoints = setup(tmp_path)
    checkpoints.save(state(1))
    calls, real = [], torch.load

    def recorded(f, *args, **kwargs):
        calls.append((Path(f).name, kwargs.get("weights_only")))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recorded)
    checkpoints.load(tmp_path / "last", model, "lin")
    assert {name for name, _ in calls} == {"optimizer.bin", "random_states_0.pkl"}
    assert all(weights_only is True for _, weights_only in calls), calls


class Payload:
    """A pickle that would create a file when loaded with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize(
    "content, match",
    [
        (b"PK\x03\x04 truncated", r"random_states_0.pkl' is not a loadable random-states file"),
        ({"step": 3}, r"random_states_0.pkl' is not a loadable.*no \['random_state'"),
        ("payload", r"random_states_0.pkl' is not a loadable.*(Unsupported global|[Ww]eights.only)"),
        ("short seed", r"random_states_0.pkl': accelerate could not restore the random states"),
    ],
)
def test_random_states_that_accelerate_would_skip_are_an_error(tmp_path, content, match):
    """A damaged file whose sha256 was recorded anyway: accelerate alone would log at info level and go on."""
    model, checkpoints = setup(tmp_path)
    checkpoints.save(state(1))
    folder = tmp_path / "checkpoint-1"
    path, marker = folder / "random_states_0.pkl", tmp_path / "pwned"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "payload":
        torch.save(Payload(marker), path)
    elif content == "short seed":
        states = load(path)
        torch.save(states | {"torch_manual_seed": states["torch_manual_seed"][:100]}, path)
    else:
        torch.save(content, path)
    rehash(folder, path.name)
    with pytest.raises(ValueError, match=match):
        checkpoints.load(folder, model, "lin")
    assert not marker.exists()  # no pickle ran


def test_a_foreign_optimizer_state_is_refused(tmp_path):
    model, checkpoints = setup(tmp_path)
    checkpoints.save(state(1))
    folder = tmp_path / "checkpoint-1"
    other = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))]}] * 1, lr=0.1)
    torch.save(other.state_dict(), folder / "optimizer.bin")
    rehash(folder, "optimizer.bin")
    with pytest.raises(ValueError, match=r"optimizer.bin' holds parameter groups of sizes \[1\].* \[2\]"):
        checkpoints.load(folder, model, "lin")
    (folder / "custom_checkpoint_0.pkl").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"custom_checkpoint_0.pkl' is foreign"):
        checkpoints.load(folder, model, "lin")


# ------------------------------------------------------------------------------- whole runs
def test_subspace_resume_is_bit_exact_and_needs_its_random_states(tmp_path):
    run(tmp_path, *LINE, "--epochs", "2", "--experiment", "s")
    folder = tmp_path / "s"
    straight = measured(rows(folder))
    run(tmp_path, *LINE, "--epochs", "2", "--resume", str(folder / "checkpoint-1"))  # epoch 1 again
    assert measured(rows(folder)) == straight  # every metric of epoch 1, to the last digit
    (folder / "checkpoint-1" / "random_states_0.pkl").unlink()  # resumed, it would sample other points
    with pytest.raises(ValueError, match=r"checkpoint-1/random_states_0.pkl' is missing"):
        run(tmp_path, *LINE, "--epochs", "2", "--resume", str(folder / "checkpoint-1"))


def test_validate_and_resume_refuse_a_flipped_bit(tmp_path, one_epoch_copy):
    last = one_epoch_copy / "last"
    argv = ["--model", "test_resnet_op2", "--checkpoint", str(last)]
    assert validate(parse_args(validate_parser(), argv))["top1"] > 0
    path = last / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x40  # one bit of one weight: the file still loads
    path.write_bytes(bytes(data))
    with pytest.raises(
        ValueError, match=r"checkpoint-1/model.safetensors' does not match the sha256 recorded"
    ):
        validate(parse_args(validate_parser(), argv))
    with pytest.raises(
        ValueError, match=r"checkpoint-1/model.safetensors' does not match the sha256 recorded"
    ):
        run(tmp_path, *FAST, "--epochs", "2", "--resume", str(last))
    with pytest.raises(ValueError, match=r"has no ema.safetensors: it was trained without --model-ema"):
        validate(parse_args(validate_parser(), [*argv, "--use-ema"]))


TWO_PROCESSES = """
import sys, torch
from pathlib import Path
from torch import nn
from accelerate import Accelerator
from timm_overparam.train.checkpoint import Checkpoints, TrainerState

folder = Path(sys.argv[1])
acc = Accelerator(cpu=True)
torch.manual_seed(acc.process_index)
model = nn.Linear(3, 2)
model, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
checkpoints = Checkpoints(acc, folder, decreasing=False, history=1)
checkpoints.save(TrainerState("lin", 1, 1, 0.5))
expected = torch.rand(3)
checkpoints.load(folder / "last", model, "lin")
assert torch.equal(torch.rand(3), expected), "the RNG state of each process is restored"
acc.wait_for_everyone()
if acc.is_main_process:
    (folder / "checkpoint-1" / "random_states_1.pkl").unlink()
acc.wait_for_everyone()
try:
    checkpoints.load(folder / "last", model, "lin")
except ValueError as e:  # one file each: printed lines of two processes may interleave
    (folder / f"error-{acc.process_index}.txt").write_text(str(e))
"""


@pytest.mark.slow
def test_two_processes_save_and_a_missing_file_of_one_stops_both(tmp_path):
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESSES)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    out = subprocess.run(
        [*launch, str(script), str(tmp_path / "exp")], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    errors = [(tmp_path / "exp" / f"error-{i}.txt").read_text() for i in range(2)]
    assert errors[1].startswith(
        f"{str(tmp_path / 'exp' / 'checkpoint-1' / 'random_states_1.pkl')!r} is missing"
    )
    assert errors[0] == f"another process: ValueError: {errors[1]}"
    files = read_state(tmp_path / "exp" / "last").files
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(files)

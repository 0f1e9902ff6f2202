"""Beyond one process (issue 16, item 3): FSDP2 and DeepSpeed ZeRO-2 through accelerate against DDP,
on 2 CPU processes.

accelerate sets FSDP and DeepSpeed up only for accelerator devices; ``tests/accelerate_on_cpu.py``
lifts those gates and nothing else, so train.py's FSDP2 path (accelerate's ``fully_shard``
preparation and sharded checkpoints, this project's evaluation replica, regulariser, checkpoints
and exports) and its DeepSpeed path (DeepSpeed's engine, ZeRO optimizer and checkpoint files) run
here with gloo. Every run uses the shipped configs (configs/accelerate/*.yaml).
"""

import argparse
import copy
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import accelerate
import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from accelerate.commands.config.config_args import load_config_from_file
from filelock import FileLock
from packaging.version import Version
from safetensors.torch import load_file

import timm_overparam  # noqa: F401  (registers the _op/_line models)
from timm_overparam.subspace.regularizer import subspace_regularizer
from timm_overparam.train.callbacks import Callback, CallbackList, NormRecorder
from timm_overparam.train.checkpoint import check_deepspeed_file, read_state
from timm_overparam.train.cli import parse_args, validate_parser
from timm_overparam.train.loop import Trainer
from timm_overparam.train.sharding import block_classes, mark_blocks
from timm_overparam.train.validation import validate

ROOT = Path(__file__).resolve().parents[1]
# FSDP2 is torch.distributed.fsdp.fully_shard from torch 2.6, and accelerate's fsdp_version 2 from
# 1.6: older sets (the oldest the bounds allow is torch 2.4, accelerate 1.3) train with DDP only
FSDP2 = Version(torch.__version__.split("+")[0]) >= Version("2.6") and Version(
    accelerate.__version__
) >= Version("1.6")
needs_fsdp2 = pytest.mark.skipif(not FSDP2, reason="FSDP2 needs torch >= 2.6 and accelerate >= 1.6")
CONFIGS = ROOT / "configs" / "accelerate"
ARGS = ["-b", "64", "--warmup-epochs", "0", "--lr", "0.1", "--workers", "0", "--train-fraction", "0.5"]


def launch(config: str, *argv: str) -> subprocess.CompletedProcess:
    """train.py under ``accelerate launch --config_file configs/accelerate/<config>`` with 2 CPU
    processes (FSDP and DeepSpeed through ``tests/accelerate_on_cpu.py``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if config.startswith("deepspeed"):
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's CPU accelerator, without looking for GPUs
    else:
        env["ACCELERATE_USE_CPU"] = "true"  # accelerate's DeepSpeed path is never taken on use_cpu
    harness = [] if config == "ddp.yaml" else ["tests/accelerate_on_cpu.py"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config)]
    cmd += ["--num_processes", "2", *harness, "train.py", *argv]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def rows(folder: Path) -> list[dict[str, float]]:
    with open(folder / "summary.csv") as f:
        return [{k: float(v) for k, v in r.items() if k != "train_step_time"} for r in csv.DictReader(f)]


def test_the_shipped_configs_are_what_accelerate_reads():
    ddp = load_config_from_file(str(CONFIGS / "ddp.yaml"))
    assert (ddp.distributed_type, ddp.mixed_precision, ddp.use_cpu) == ("MULTI_GPU", "no", False)
    fsdp = load_config_from_file(str(CONFIGS / "fsdp2.yaml"))
    assert fsdp.distributed_type == "FSDP"
    assert fsdp.fsdp_config["fsdp_version"] == 2
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"  # train.py requires it
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"  # model._no_split_modules
    zero = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml"))
    assert (zero.distributed_type, zero.mixed_precision) == ("DEEPSPEED", "no")
    assert zero.deepspeed_config["zero_stage"] == 2 and zero.deepspeed_config["zero3_init_flag"] is False
    # clipping and accumulation are train.py's flags ("auto"): a number here would have to match them
    assert not {"gradient_clipping", "gradient_accumulation_steps"} & set(zero.deepspeed_config)


@pytest.mark.parametrize(
    "arch, blocks",
    [
        ("resnet18", ["BasicBlock"]),
        ("resnet50_op3", ["Bottleneck"]),
        ("vit_base_patch16_224_op2", ["Block"]),
        ("regnetx_002", ["Bottleneck"]),  # blocks s1.b1 ...: no Sequential, timm's grouping finds them
        ("test_convnext", ["ConvNeXtBlock", "ConvNeXtStage"]),
        # a subspace ConvNeXt's blocks own a parametrized gamma: a class per instance, so the stage
        ("convnext_tiny_line", ["ConvNeXtStage"]),
    ],
)
def test_block_classes_are_timms_blocks(arch, blocks):
    # on meta (no memory), but regnet: timm before 1.0.31 sizes its stages with torch.unique, which meta lacks
    with torch.device("cpu" if arch.startswith("regnet") else "meta"):
        model = timm.create_model(arch)
    assert block_classes(model) == blocks
    assert mark_blocks(model) == blocks and model._no_split_modules == blocks
    model._no_split_modules = ["Mine"]  # a model that names its own units keeps them
    assert mark_blocks(model) == ["Mine"]


def _sharded_gradients(rank: int, world: int, init: str, result: dict) -> None:
    """One process of ``test_sharded_regulariser_and_loss_have_unsharded_gradients``."""
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet_line", num_classes=10).double()
    reference = copy.deepcopy(model)
    for module in list(model.modules()):
        if type(module).__name__ in block_classes(model):
            fully_shard(module)  # the blocks' vertices are DTensors outside their forward
    fully_shard(model)
    g = torch.Generator().manual_seed(1)
    x, y = (
        torch.randn(8, 3, 32, 32, dtype=torch.float64, generator=g),
        torch.randint(0, 10, (8,), generator=g),
    )
    ce = torch.nn.functional.cross_entropy
    half = slice(4 * rank, 4 * rank + 4)
    reg = subspace_regularizer(model)
    (ce(model(x[half]), y[half]) + reg).backward()
    ref_reg = subspace_regularizer(reference)
    (
        sum(ce(reference(x[4 * r : 4 * r + 4]), y[4 * r : 4 * r + 4]) for r in range(world)) / world + ref_reg
    ).backward()
    grads = dict(model.named_parameters())
    errors = [
        ((grads[n].grad.full_tensor() - p.grad).abs().max() / p.grad.abs().max()).item()
        for n, p in reference.named_parameters()
        if p.grad is not None
    ]
    sharded = sum(type(p).__name__ == "DTensor" for p in model.parameters())
    if rank == 0:
        result.update(
            reg=reg.item(), ref_reg=ref_reg.item(), error=max(errors), n=len(errors), sharded=sharded
        )
    dist.destroy_process_group()


@pytest.mark.slow
@needs_fsdp2
def test_sharded_regulariser_and_loss_have_unsharded_gradients(tmp_path):
    """FSDP2 over the blocks of a line (float64, 2 gloo processes): the regulariser over sharded and
    whole vertices, plus the data loss, gives the regulariser and every gradient of one unsharded model."""
    result = mp.Manager().dict()
    mp.spawn(_sharded_gradients, args=(2, f"file://{tmp_path / 'rendezvous'}", result), nprocs=2)
    assert result["reg"] == pytest.approx(result["ref_reg"], rel=1e-12)
    assert result["n"] > 30 and result["sharded"] == result["n"]  # every parameter sharded and checked
    assert result["error"] < 1e-10


OP_ARGV = ["--model", "test_resnet_op2", *ARGS, "--epochs", "2"]


def ddp_run(tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str, argv: list[str]) -> Path:
    """The DDP run ``name`` of this session, launched once whichever xdist workers ask for it: the
    first under a file lock in the folder the workers share, the others then read its files."""
    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent  # pytest-N/, shared by pytest-N/gw0, gw1
    folder, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed launch left
            launch("ddp.yaml", *argv, "--output", str(folder), "--experiment", "ddp")
            done.touch()
    return folder / "ddp"


@pytest.fixture
def ddp_op_run(tmp_path_factory, worker_id) -> Path:
    """The DDP run the FSDP2 and DeepSpeed op runs are compared with."""
    return ddp_run(tmp_path_factory, worker_id, "ddp_op", OP_ARGV)


@pytest.mark.slow
@needs_fsdp2
def test_fsdp2_op_run_equals_ddp_resumes_and_exports_a_stock_model_once(tmp_path, ddp_op_run):
    argv = [*OP_ARGV, "--output", str(tmp_path)]
    out = launch("fsdp2.yaml", *argv, "--experiment", "fsdp")
    assert out.stdout.count("test_resnet_op2 (op)") == 1  # the main process speaks
    ddp, fsdp = ddp_op_run, tmp_path / "fsdp"
    for one, two in zip(rows(fsdp), rows(ddp), strict=True):  # the same run, sharded
        assert one == pytest.approx(two, rel=1e-6, abs=1e-7)
    # checkpoints: accelerate's shards, and the full weights beside them (what validate.py reads)
    last = fsdp / "checkpoint-2"
    assert {p.name for p in last.iterdir()} >= {"pytorch_model_fsdp_0", "optimizer_0", "model.safetensors"}
    assert (last / "pytorch_model_fsdp_0" / ".metadata").is_file()
    assert (
        load_file(last / "model.safetensors").keys()
        == load_file(ddp / "checkpoint-2" / "model.safetensors").keys()
    )
    # the export: one full stock state_dict, as DDP's
    a, b = load_file(fsdp / "collapsed.safetensors"), load_file(ddp / "collapsed.safetensors")
    assert (
        a.keys()
        == b.keys()
        == timm.create_model("test_resnet", num_classes=10, in_chans=1).state_dict().keys()
    )
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    record = validate(
        parse_args(validate_parser(), ["--model", "test_resnet_op2", "--checkpoint", str(fsdp / "last")])
    )
    assert record["top1"] == pytest.approx(100 * rows(fsdp)[-1]["eval_top1"], abs=1e-3)
    # resume the sharded checkpoint of epoch 1: epoch 2 again, as the straight run
    os.unlink(fsdp / "last")
    os.symlink("checkpoint-1", fsdp / "last")
    straight = rows(fsdp)
    launch("fsdp2.yaml", *argv, "--resume", str(fsdp / "last"))
    assert rows(fsdp) == straight


@pytest.mark.slow
def test_deepspeed_zero2_op_run_equals_ddp_resumes_and_exports_a_stock_model(tmp_path, ddp_op_run):
    argv = [*OP_ARGV, "--output", str(tmp_path)]
    out = launch("deepspeed_zero2.yaml", *argv, "--experiment", "zero")
    assert out.stdout.count("test_resnet_op2 (op)") == 1
    ddp, zero = ddp_op_run, tmp_path / "zero"
    for one, two in zip(rows(zero), rows(ddp), strict=True):  # ZeRO-2 is data parallelism, partitioned
        assert one == pytest.approx(two, rel=1e-6, abs=1e-7)
    # checkpoints: DeepSpeed's engine files, each recorded and checked, and the full weights
    last = zero / "checkpoint-2"
    engine = {p.name for p in (last / "pytorch_model").iterdir()}
    assert engine == {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} | {
        "mp_rank_00_model_states.pt"
    }
    recorded = read_state(last).files
    assert {f"pytorch_model/{n}" for n in engine} | {"model.safetensors"} <= recorded.keys()
    for name in engine:
        check_deepspeed_file(last / "pytorch_model" / name)  # what DeepSpeed unpickles: data only
    assert (
        load_file(last / "model.safetensors").keys()
        == load_file(ddp / "checkpoint-2" / "model.safetensors").keys()
    )
    a, b = load_file(zero / "collapsed.safetensors"), load_file(ddp / "collapsed.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    record = validate(
        parse_args(validate_parser(), ["--model", "test_resnet_op2", "--checkpoint", str(zero / "last")])
    )
    assert record["top1"] == pytest.approx(100 * rows(zero)[-1]["eval_top1"], abs=1e-3)
    # resume epoch 1's checkpoint (DeepSpeed restores its optimizer partitions): the straight run again
    os.unlink(zero / "last")
    os.symlink("checkpoint-1", zero / "last")
    straight, export = rows(zero), (zero / "collapsed.safetensors").read_bytes()
    launch("deepspeed_zero2.yaml", *argv, "--resume", str(zero / "last"))
    assert rows(zero) == straight and (zero / "collapsed.safetensors").read_bytes() == export


def test_a_deepspeed_file_holding_anything_but_data_is_refused(tmp_path):
    from deepspeed.utils.tensor_fragment import fragment_address

    data = tmp_path / "data.pt"
    torch.save({"state": [torch.ones(2)], "slices": {"w": fragment_address(numel=2, start=0)}}, data)
    check_deepspeed_file(data)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state": [torch.ones(2)], "args": argparse.Namespace(lr=0.1)}, foreign)
    with pytest.raises(ValueError, match=r"foreign\.pt.*not a DeepSpeed ZeRO checkpoint file.*Namespace"):
        check_deepspeed_file(foreign)


LINE_ARGV = ["--model", "test_resnet_line", *ARGS, "--epochs", "1", "--num-samples", "2"]
LINE_ARGV += "--eval-points 0,0.5,1 --eval-ensembles 0+1 --bn-recal-batches 2".split()
POINTS = ("point-0.safetensors", "point-0.5.safetensors", "point-1.safetensors")


@pytest.fixture
def ddp_line_run(tmp_path_factory, worker_id) -> Path:
    """The DDP run of a line with the regulariser that the FSDP2 and DeepSpeed runs are compared with."""
    return ddp_run(tmp_path_factory, worker_id, "ddp_line", LINE_ARGV)


@pytest.mark.slow
def test_deepspeed_line_run_with_the_regulariser_equals_ddp(tmp_path, ddp_line_run):
    launch("deepspeed_zero2.yaml", *LINE_ARGV, "--output", str(tmp_path), "--experiment", "zero")
    zero = tmp_path / "zero"
    (one,), (two,) = rows(zero), rows(ddp_line_run)  # whole vertices on every process: DDP's sums
    assert one.keys() == two.keys() and one == pytest.approx(two, rel=1e-6, abs=1e-7)
    for name in POINTS:
        a, b = load_file(zero / name), load_file(ddp_line_run / name)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


@pytest.mark.slow
@needs_fsdp2
def test_fsdp2_line_run_with_the_regulariser_trains_as_ddp(tmp_path, ddp_line_run):
    launch("fsdp2.yaml", *LINE_ARGV, "--output", str(tmp_path), "--experiment", "fsdp")
    ddp, fsdp = ddp_line_run, tmp_path / "fsdp"
    # the regulariser's sums run in another order over shards (float32 rounding, 3e-7 relative in
    # its gradients), which 5 steps at lr 0.1 amplify; without it the runs are equal to the last bit
    (one,), (two,) = rows(fsdp), rows(ddp)
    assert one.keys() == two.keys()
    assert one["train_loss"] == pytest.approx(two["train_loss"], rel=0.01)
    for point in ("0", "0.5", "1"):
        assert one[f"eval_point{point}_loss"] == pytest.approx(two[f"eval_point{point}_loss"], rel=0.02)
    for name in POINTS:
        assert load_file(fsdp / name).keys() == load_file(ddp / name).keys()


def _fake_run(**config) -> SimpleNamespace:
    """What ``Trainer._check_sharding`` reads of a run under FSDP2 (accelerate's sharded state dict)."""
    plugin = SimpleNamespace(
        state_dict_type=SimpleNamespace(name=config.pop("state_dict_type", "SHARDED_STATE_DICT"))
    )
    acc = SimpleNamespace(is_fsdp2=True, distributed_type="FSDP", state=SimpleNamespace(fsdp_plugin=plugin))
    cfg = SimpleNamespace(
        **{"model_ema": False, "pvar": None, "dynamic_lr": False, "store_grad": False, **config}
    )
    return SimpleNamespace(acc=acc, config=cfg)


def test_fsdp2_refuses_what_needs_whole_parameters_at_every_step():
    model = timm.create_model("test_resnet_op2")
    replica = Trainer._check_sharding(_fake_run(), model)
    assert replica is not model and model._no_split_modules == ["BasicBlock"]
    with pytest.raises(ValueError, match=r"--model-ema read whole parameters.*configs/accelerate/ddp.yaml"):
        Trainer._check_sharding(_fake_run(model_ema=True), model)
    with pytest.raises(ValueError, match=r"--pvar/--dynamic-lr/--store-grad read whole parameters"):
        Trainer._check_sharding(_fake_run(pvar=2.0), model)
    with pytest.raises(ValueError, match=r"fsdp_state_dict_type FULL_STATE_DICT.*SHARDED_STATE_DICT"):
        Trainer._check_sharding(_fake_run(state_dict_type="FULL_STATE_DICT"), model)


def _fake_deepspeed_run(ds_config: dict, callbacks=(), **config) -> SimpleNamespace:
    """What ``Trainer._check_deepspeed`` reads of a run under DeepSpeed."""
    state = SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=ds_config))
    acc = SimpleNamespace(is_fsdp2=False, distributed_type="DEEPSPEED", state=state)
    defaults = dict(
        amp=False, pvar=None, dynamic_lr=False, store_grad=False, clip_grad=None, grad_accum_steps=1
    )
    run = SimpleNamespace(
        acc=acc, config=SimpleNamespace(**{**defaults, **config}), callbacks=CallbackList(list(callbacks))
    )
    run._check_deepspeed = lambda: Trainer._check_deepspeed(run)
    return run


def test_deepspeed_takes_train_py_flags_and_refuses_what_zero_cannot_do():
    model = timm.create_model("test_resnet_op2")
    config = {"zero_optimization": {"stage": 2}, "gradient_clipping": "auto"}
    assert (
        Trainer._check_sharding(_fake_deepspeed_run(config, clip_grad=2.0, grad_accum_steps=3), model) is None
    )
    # "auto" (accelerate would clip at 1.0) becomes train.py's flags
    assert config["gradient_clipping"] == 2.0 and config["gradient_accumulation_steps"] == 3
    unclipped = {"zero_optimization": {"stage": 1}}
    Trainer._check_deepspeed(_fake_deepspeed_run(unclipped))
    assert unclipped["gradient_clipping"] == 0.0  # DeepSpeed's "no clipping"
    with pytest.raises(ValueError, match=r"gradient_clipping is 1.0, train.py's --clip-grad 0.0.*auto"):
        Trainer._check_deepspeed(_fake_deepspeed_run({"gradient_clipping": 1.0}))
    with pytest.raises(
        ValueError, match=r"gradient_accumulation_steps is 4, train.py's --grad-accum-steps 1"
    ):
        Trainer._check_deepspeed(_fake_deepspeed_run({"gradient_accumulation_steps": 4}))
    with pytest.raises(ValueError, match=r"ZeRO stage 3.*configs/accelerate/fsdp2.yaml"):
        Trainer._check_deepspeed(_fake_deepspeed_run({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ValueError, match=r"--amp under DeepSpeed.*16 bits"):
        Trainer._check_deepspeed(_fake_deepspeed_run({}, amp=True))
    with pytest.raises(ValueError, match=r"the DeepSpeed config's bf16 under DeepSpeed"):
        Trainer._check_deepspeed(_fake_deepspeed_run({"bf16": {"enabled": True}}))
    with pytest.raises(ValueError, match=r"--pvar/--dynamic-lr/--store-grad read gradients"):
        Trainer._check_deepspeed(_fake_deepspeed_run({}, store_grad=True))
    with pytest.raises(ValueError, match=r"callbacks \[.*NormRecorder'\] read gradients.*ddp.yaml"):
        Trainer._check_deepspeed(_fake_deepspeed_run({}, callbacks=[NormRecorder()]))
    Trainer._check_deepspeed(_fake_deepspeed_run({}, callbacks=[Callback()]))  # no step hooks: fine

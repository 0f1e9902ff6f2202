"""Run a script with accelerate's FSDP and DeepSpeed paths allowed on CPU processes (gloo); for tests only.

accelerate sets these strategies up only for accelerator devices, and each gate is lifted here and
nothing else, so that train.py's FSDP2 and DeepSpeed paths run in the CPU test suite:

- FSDP: ``AcceleratorState`` sets FSDP up for MULTI_GPU and the like, never MULTI_CPU, so a CPU
  launch of an FSDP config silently trains with plain data parallelism. torch's ``fully_shard``
  runs on CPU processes with gloo: the FSDP plugin is kept.
- DeepSpeed: without an accelerator ``PartialState`` finds no distributed backend and records one
  process, while DeepSpeed's group (gloo, which its CPU accelerator picks) has them all: the backend
  is gloo across the launched processes. DeepSpeed's shared-memory collective op, which it would
  compile with g++ on first use (minutes), is marked unavailable, so DeepSpeed uses gloo's, as it
  does on any machine that cannot build it.

    accelerate launch --config_file configs/accelerate/fsdp2.yaml --num_processes 2 \\
        tests/accelerate_on_cpu.py train.py --model test_resnet_op2 ...
    DS_ACCELERATOR=cpu accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml \\
        --num_processes 2 tests/accelerate_on_cpu.py train.py --model test_resnet_op2 ...
"""

import os
import runpy
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__
_prepare_backend = PartialState._prepare_backend


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs) -> None:
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        # AcceleratorState re-reads PartialState's type whenever it is built again (save_state does)
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def _gloo_for_deepspeed(self, *args, **kwargs):
    backend, kind = _prepare_backend(self, *args, **kwargs)
    if backend is None and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "gloo", DistributedType.MULTI_CPU  # PartialState turns it into DEEPSPEED after init
    return backend, kind


if __name__ == "__main__":  # imported (pytest collects this folder's modules), it changes nothing
    AcceleratorState.__init__ = _init_with_fsdp_on_cpu
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        import deepspeed.ops

        PartialState._prepare_backend = _gloo_for_deepspeed
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")

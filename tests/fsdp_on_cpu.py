"""Run a script with accelerate's FSDP path allowed on CPU processes (gloo); for tests only.

accelerate selects FSDP only for accelerator devices (``AcceleratorState``: FSDP is set up for
MULTI_GPU and the like, never MULTI_CPU), so a CPU launch of an FSDP config silently trains with
plain data parallelism. torch's ``fully_shard`` itself runs on CPU processes with gloo; this
wrapper lifts accelerate's device gate and nothing else, so that train.py's FSDP2 path (accelerate's
``fsdp2_prepare_model``, sharded ``save_state``/``load_state``, this project's evaluation replica,
checkpoints and exports) runs in the CPU test suite.

    accelerate launch --config_file configs/accelerate/fsdp2.yaml --num_processes 2 \\
        tests/fsdp_on_cpu.py train.py --model test_resnet_op2 ...
"""

import runpy
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs) -> None:
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        # AcceleratorState re-reads PartialState's type whenever it is built again (save_state does)
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


if __name__ == "__main__":  # imported (pytest collects this folder's modules), it changes nothing
    AcceleratorState.__init__ = _init_with_fsdp_on_cpu
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")

"""Training and validation as library calls (what train.py and validate.py run).

    from timm_overparam.train import TrainConfig, train
    results = train(TrainConfig(model="resnet18_op3", epochs=3, batch_size=64))

- ``config``: ``TrainConfig``/``ValidateConfig``, the typed run configs (flags, YAML, Python);
- ``cli``: the command lines (argparse lives here only; flags built from the configs);
- ``data``: datasets and loaders (timm's ``create_dataset`` and transforms, the embedded digits);
- ``families``: op, subspace and plain models as strategies (loss, evaluation, export);
- ``callbacks``: the callback protocol for research instruments (``Callback``, ``NormRecorder``);
- ``loop``: the accelerate training loop (``Trainer``, ``train``);
- ``checkpoint``: checkpoint folders (atomic, hashed, checked on resume);
- ``validation``: validate.py's job (``validate``).
"""

from timm_overparam.train.callbacks import Callback, NormRecorder
from timm_overparam.train.config import ConfigError, TrainConfig, ValidateConfig
from timm_overparam.train.loop import Trainer, train
from timm_overparam.train.validation import validate

__all__ = [
    "Callback",
    "ConfigError",
    "NormRecorder",
    "TrainConfig",
    "Trainer",
    "ValidateConfig",
    "train",
    "validate",
]

"""The exploration lab of seed 003: does over-parameterization help plain SGD find a solution?
(docs/exploration.md).

- ``models``: NaiveCNN, RandomConv, the hypernetworks, BoolNet, registered in timm as ``lab_*``
  (so ``_op2``/``_line``... variants come from this project's conversions); loaded with
  ``import timm_overparam``;
- ``tasks``: the pattern-1101 and BoolNet tasks, their recipes and metrics (``PatternTask``,
  ``BoolNetTask``, ``accuracy``, ``macro_f1``);
- ``restarts``: restarts of one configuration trained at once with ``torch.func``
  (``train_restarts``) or one at a time (``train_restart``, the reference);
- ``experiment``: a resumable run over models and sizes (``run_lab``), ``results.json``;
- ``report``: ``report.md`` and the figure (``write_report``);
- ``paired``: each variant against its base model over shared restarts (``paired_rows``);
- ``compare``: several runs side by side, e.g. one per learning rate (``compare_runs_table``);
- ``__main__``: ``python -m timm_overparam.lab pattern|boolnet|plot|compare``.

The names below load their module when first used.
"""

import importlib
from typing import Any

_HOMES = {
    "BoolNetTask": "tasks",
    "PatternTask": "tasks",
    "accuracy": "tasks",
    "macro_f1": "tasks",
    "RestartResults": "restarts",
    "train_restart": "restarts",
    "train_restarts": "restarts",
    "run_lab": "experiment",
    "load_results": "report",
    "summarize_results": "report",
    "write_report": "report",
    "paired_rows": "paired",
    "compare_runs_table": "compare",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"timm_overparam.lab.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

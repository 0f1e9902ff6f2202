"""Reading a YAML file with errors that name it: run configs and sweep files share this."""

from __future__ import annotations

import os
from typing import Any

import yaml


def read_yaml_file(path: str | os.PathLike, what: str, error: type[ValueError] = ValueError) -> Any:
    """The parsed contents of the YAML file ``path``; an unreadable file or invalid YAML raises
    ``error`` naming ``what`` and the file.

    Example: ``read_yaml_file("configs/sweeps/digits_depth.yaml", "sweep file")["method"]``
    """
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise error(f"cannot read {what} {str(path)!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise error(f"{what} {str(path)!r} is not valid YAML: {' '.join(str(e).split())}") from None

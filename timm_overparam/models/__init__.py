"""timm entrypoints of the families, one module per family (``timm.list_models(module='op')``)."""

from timm_overparam.models import op, subspace

__all__ = ["op", "subspace"]

"""timm_overparam: over-parameterize any timm model for training, collapse it back for inference."""

from timm_overparam.expand import ExpandOptions, ExpandProject, collapse_module, expand_module

__all__ = ["ExpandOptions", "ExpandProject", "collapse_module", "expand_module"]

"""The re-parameterization core both families share.

- ``walk``: the conversion walk (which modules or tensors, the report, refusing stacked conversions,
  the derived cfg names) that ``overparameterize`` and ``subspace`` are thin uses of;
- ``unparametrize``: removing a parametrization while keeping the current value (collapse, points);
- ``weights``: safetensors files of any model, written atomically, loaded with checks;
- ``atomic``: the one atomic-write helper (``atomic_path``, ``write_text_atomic``, ``write_bytes_atomic``);
- ``modes``: ``preserve_modes``, saving and restoring every submodule's train/eval flag;
- ``numerics``: ``rel_err``, the relative error every check and test compares with.
"""

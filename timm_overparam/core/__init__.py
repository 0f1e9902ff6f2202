"""The re-parameterization core both families share.

- ``walk``: the conversion walk (which modules or tensors, the report, refusing stacked conversions,
  the derived cfg names) that ``overparameterize`` and ``subspace`` are thin uses of;
- ``unparametrize``: removing a parametrization while keeping the current value (collapse, points);
- ``weights``: safetensors files of any model, written atomically, loaded with checks.
"""

"""Training and validation as library calls (what train.py and validate.py run).

- ``cli``: the command lines (timm's flag names, YAML ``-c`` files, point lists);
- ``data``: datasets and loaders (timm's ``create_dataset`` and transforms, the embedded digits);
- ``loop``: the accelerate training loop, per-epoch evaluation and exports (``Trainer``, ``train``);
- ``checkpoint``: checkpoint folders (atomic, hashed, checked on resume);
- ``validation``: validate.py's job.
"""

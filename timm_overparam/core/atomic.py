"""Atomic file writes: a hidden temporary file in the target's folder, then a rename.

A reader sees the old file or the complete new one, never a partial write; a failed write (a full
disk, an exception in the writer) removes the temporary file and leaves the old file as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_bytes_atomic", "write_text_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path next to ``path``; on a clean exit it is renamed to ``path``.

    For writers that want a file name (``safetensors.torch.save_file``, ``Figure.savefig``).
    The folder must exist; on an exception the temporary file is removed.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_path(folder / "a.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (folder / "a.txt").read_text(), tmp.name, tmp.exists()
    ('done', '.a.txt.tmp', False)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` verbatim (``newline=""``: a CSV's ``\\r\\n`` stays) to ``path`` atomically.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "rows.csv"
    >>> write_text_atomic(p, "a,b\\r\\n1,2\\r\\n"); p.read_bytes()
    b'a,b\\r\\n1,2\\r\\n'
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "blob.bin"
    >>> write_bytes_atomic(p, b"\\x00\\x01"); p.read_bytes()
    b'\\x00\\x01'
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)

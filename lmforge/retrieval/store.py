"""Index folders on disk: ``meta.json`` plus one ``.npy`` per array, written atomically, read memory-mapped.

An index is built once and queried many times, often by several processes: ``.npy`` files open with
``mmap_mode="r"`` so loading costs nothing and the pages are shared through the OS cache. A save writes
a sibling temporary folder and renames it into place, so a crash mid-save leaves the old index (or none),
never half of a new one. ``meta.json`` names the format and its version; a mismatch is a clear error.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

META = "meta.json"


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``path`` in one rename.

    If the body raises, the temporary folder is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if path.exists():
            # A folder cannot be renamed over a non-empty one: move the old aside first, then drop it.
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
            os.replace(path, old / "index")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_folder(
    path: str | os.PathLike,
    fmt: str,
    version: int,
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
    files: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write ``meta`` and ``arrays`` to the folder ``path``, replacing what was there in one rename.

    ``files`` maps a file name to a function that writes it there (e.g. a faiss index)."""
    with atomic_folder(path) as tmp:
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
        for name, write in (files or {}).items():
            write(tmp / name)
        body = {"format": fmt, "version": version, "arrays": sorted(arrays), **meta}
        (tmp / META).write_text(json.dumps(body), encoding="utf-8")
    return Path(path)


def load_folder(
    path: str | os.PathLike, fmt: str, version: int, mmap: bool = True
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a folder written by :func:`save_folder`; every problem names the file and what was expected."""
    path = Path(path)
    meta_file = path / META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not an index folder (no {META})")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_file} is corrupt: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path} holds a {got!r} index, expected {fmt!r}")
    if meta.get("version") != version:
        raise ValueError(
            f"{path} was written by format version {meta.get('version')}, this lmforge reads version "
            f"{version}: rebuild the index"
        )
    arrays = {}
    for name in meta.get("arrays", []):
        f = path / f"{name}.npy"
        try:
            arrays[name] = np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{f} is missing or corrupt: {e}") from None
    return meta, arrays

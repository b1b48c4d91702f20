"""vsr_index: fast exact and approximate vector search with a faiss-like numpy API.

>>> import numpy as np, vsr_index
>>> index = vsr_index.FlatIndex(dim=4, metric="cosine")
>>> index.add(np.eye(4, dtype=np.float32), ids=[10, 11, 12, 13])
>>> scores, ids = index.search(np.eye(4, dtype=np.float32)[:1], k=2)
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

from vsr_index import _core
from vsr_index._core import (
    DeviceArray,
    FlatIndex,
    GpuFlatIndex,
    GraphIndex,
    Index,
    Session,
    cuda_info,
    index_kind,
    set_isa,
    simd_info,
)


def load(path: str | os.PathLike[str], mmap: bool = True, verify: bool = True) -> Index:
    """Loads any saved index; the file says which kind it holds.

    mmap=True serves the vectors from the mapped file (indexes larger than memory work; the first
    add/remove copies them into memory). The file must then not be written in place while the index
    lives: replace it by saving over it (a rename, which the mapping survives). A file changed in
    place is reported as OSError by the next call; one truncated during a call can still end the
    process with SIGBUS, so use mmap=False for files that others may rewrite. verify=True checks
    every section checksum while loading.
    """
    kind = index_kind(path)
    cls = getattr(_core, kind.capitalize() + "Index", None)
    if cls is None:
        raise NotImplementedError(f"{os.fspath(path)!r} holds a {kind!r} index, which this build cannot load")
    return cls.load(path, mmap=mmap, verify=verify)


__all__ = [
    "DeviceArray",
    "FlatIndex",
    "GpuFlatIndex",
    "GraphIndex",
    "Index",
    "Session",
    "__version__",
    "cuda_info",
    "index_kind",
    "load",
    "set_isa",
    "simd_info",
]

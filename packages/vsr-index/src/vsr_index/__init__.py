"""vsr_index: fast exact and approximate vector search with a faiss-like numpy API.

>>> import numpy as np, vsr_index
>>> index = vsr_index.FlatIndex(dim=4, metric="cosine")
>>> index.add(np.eye(4, dtype=np.float32), ids=[10, 11, 12, 13])
>>> scores, ids = index.search(np.eye(4, dtype=np.float32)[:1], k=2)
"""

__version__ = "0.1.0"

from vsr_index._core import DeviceArray, FlatIndex, GpuFlatIndex, cuda_info, simd_info

__all__ = ["DeviceArray", "FlatIndex", "GpuFlatIndex", "__version__", "cuda_info", "simd_info"]

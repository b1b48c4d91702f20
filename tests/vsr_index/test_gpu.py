"""GPU flat index: clear errors on machines without a GPU; exact agreement with the CPU index on one."""

import numpy as np
import pytest

import vsr_index

INFO = vsr_index.cuda_info()


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    return torch


needs_gpu = pytest.mark.skipif(
    INFO["device_count"] == 0, reason=f"no CUDA device ({INFO['error'] or 'not compiled'})"
)


def test_cuda_info_is_well_formed():
    assert set(INFO) == {"compiled", "runtime_version", "driver_version", "device_count", "error"}
    assert isinstance(INFO["compiled"], bool)
    assert INFO["device_count"] >= 0
    if INFO["device_count"] == 0:
        assert INFO["error"], "a missing device must come with a reason"


@pytest.mark.skipif(INFO["device_count"] > 0, reason="a GPU is present")
def test_gpu_index_without_gpu_raises_clear_error():
    with pytest.raises(NotImplementedError, match=r"without CUDA|no CUDA device"):
        vsr_index.GpuFlatIndex(16)


def test_bad_arguments_are_rejected_before_touching_cuda():
    with pytest.raises(ValueError, match="unknown storage"):
        vsr_index.GpuFlatIndex(16, storage="int4")
    with pytest.raises(ValueError, match="unknown metric"):
        vsr_index.GpuFlatIndex(16, metric="hamming")


def _cpu_reference(base, queries, metric, k):
    cpu = vsr_index.FlatIndex(base.shape[1], metric=metric)
    cpu.add(base)
    return cpu.search(queries, k)


def _assert_same_results(scores, ids, ref_scores, ref_ids, atol):
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-3, atol=atol)
    # Ids can differ only where rounding swaps near-equal scores.
    assert (ids != ref_ids).mean() <= 0.01


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("k", [1, 10, 100, 1024])
@pytest.mark.parametrize("nq", [1, 3, 37])
def test_numpy_path_matches_cpu(metric, k, nq):
    rng = np.random.default_rng(k * 100 + nq)
    base = rng.standard_normal((3000, 64)).astype(np.float32)
    queries = rng.standard_normal((nq, 64)).astype(np.float32)
    gpu = vsr_index.GpuFlatIndex(64, metric=metric, storage="f32")
    gpu.add(base)
    scores, ids = gpu.search(queries, k)
    assert isinstance(scores, np.ndarray) and scores.shape == (nq, k)
    ref_scores, ref_ids = _cpu_reference(base, queries, metric, k)
    _assert_same_results(scores, ids, ref_scores, ref_ids, atol=1e-3)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_dlpack_in_and_out(dtype):
    torch = _torch_cuda()
    tdtype = getattr(torch, dtype)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4000, 128)).astype(np.float32)
    queries = rng.standard_normal((50, 128)).astype(np.float32)
    storage = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[dtype]
    gpu = vsr_index.GpuFlatIndex(128, metric="ip", storage=storage)
    gpu.add(torch.from_numpy(base).to("cuda", tdtype), ids=np.arange(4000) + 10)
    q = torch.from_numpy(queries).to("cuda", tdtype)
    scores, ids = gpu.search(q, 20)
    scores, ids = torch.from_dlpack(scores), torch.from_dlpack(ids)
    assert scores.is_cuda and ids.is_cuda and ids.dtype == torch.int64 and scores.shape == (50, 20)
    # Reference on the same rounded values the GPU stores.
    rounded_base = torch.from_numpy(base).to(tdtype).float().numpy()
    rounded_q = q.float().cpu().numpy()
    ref_scores, ref_ids = _cpu_reference(rounded_base, rounded_q, "ip", 20)
    _assert_same_results(scores.cpu().numpy(), ids.cpu().numpy() - 10, ref_scores, ref_ids, atol=2e-2)


@needs_gpu
@pytest.mark.gpu
def test_gpu_errors_are_clear():
    torch = _torch_cuda()
    gpu = vsr_index.GpuFlatIndex(8, storage="f32")
    with pytest.raises(ValueError, match="NaN"):
        gpu.add(np.full((2, 8), np.nan, dtype=np.float32))
    assert len(gpu) == 0
    gpu.add(np.eye(8, dtype=np.float32))
    with pytest.raises(ValueError, match="exceeds the GPU maximum"):
        gpu.search(np.ones((1, 8), np.float32), 5000)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        gpu.search(torch.ones((1, 8), dtype=torch.int32, device="cuda"), 1)
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        gpu.search(torch.ones((1, 9), device="cuda"), 1)
    scores, ids = gpu.search(np.ones((1, 8), np.float32), 10)
    assert (ids[0, 8:] == -1).all() and np.isneginf(scores[0, 8:]).all()
    if torch.cuda.device_count() > 1:
        with pytest.raises(ValueError, match="cuda:1 but the index is on cuda:0"):
            gpu.search(torch.ones((1, 8), device="cuda:1"), 1)

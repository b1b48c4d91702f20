// GpuFlatIndex: numpy in -> numpy out, DLPack CUDA arrays in -> DLPack CUDA arrays out.
#include <memory>
#include <optional>

#include "common.hpp"
#include "dlpack.hpp"
#include "vsr/gpu_flat_index.hpp"

namespace vsr_py {

namespace {

vsr::ElementType element_type_of(const DLDataType& t) {
  if (t.lanes != 1) throw py::type_error("vectorised DLPack dtypes are not supported");
  if (t.code == kDLFloat && t.bits == 32) return vsr::ElementType::f32;
  if (t.code == kDLFloat && t.bits == 16) return vsr::ElementType::f16;
  if (t.code == kDLBfloat && t.bits == 16) return vsr::ElementType::bf16;
  throw py::type_error("GPU arrays must be float32, float16 or bfloat16, got DLPack dtype code " +
                       std::to_string(t.code) + " with " + std::to_string(t.bits) + " bits");
}

bool is_cuda_array(const py::handle& obj) {
  auto dev = dlpack_device(obj);
  return dev && (dev->device_type == kDLCUDA || dev->device_type == kDLCUDAManaged);
}

// Validates a CUDA DLPack matrix of `dim` columns; returns its row count.
std::size_t check_cuda_matrix(const DLPackView& view, const vsr::GpuFlatIndex& index, const char* what) {
  const DLTensor& t = view.tensor();
  if (t.device.device_id != index.device())
    throw py::value_error(std::string(what) + " is on cuda:" + std::to_string(t.device.device_id) +
                          " but the index is on cuda:" + std::to_string(index.device()));
  std::int64_t rows = t.ndim == 1 ? 1 : t.shape[0];
  std::int64_t cols = t.ndim == 1 ? t.shape[0] : t.shape[1];
  if ((t.ndim != 1 && t.ndim != 2) || std::size_t(cols) != index.dim())
    throw py::value_error(std::string(what) + " must have shape (n, " + std::to_string(index.dim()) + ")");
  if (!view.c_contiguous()) throw py::value_error(std::string(what) + " must be C-contiguous");
  return std::size_t(rows);
}

DeviceArray make_device_array(int device, DLDataType dtype, std::vector<std::int64_t> shape, std::size_t bytes) {
  void* ptr = unwrap(vsr::device_alloc(device, bytes));
  DeviceArray out;
  out.buffer = std::shared_ptr<void>(ptr, [device](void* p) { vsr::device_free(device, p); });
  out.device = DLDevice{kDLCUDA, device};
  out.dtype = dtype;
  out.shape = std::move(shape);
  return out;
}

}  // namespace

void bind_gpu(py::module_& m) {
  bind_dlpack(m);
  m.def("cuda_info", [] {
    vsr::CudaInfo info = vsr::cuda_info();
    py::dict d;
    d["compiled"] = info.compiled;
    d["runtime_version"] = info.runtime_version;
    d["driver_version"] = info.driver_version;
    d["device_count"] = info.device_count;
    d["error"] = info.error;
    return d;
  }, "Whether CUDA kernels are compiled in, and how many devices this process sees.");

  py::class_<vsr::GpuFlatIndex>(m, "GpuFlatIndex")
      .def(py::init([](std::size_t dim, const std::string& metric, const std::string& storage, int device) {
             const vsr::Metric mt = parse_metric(metric);
             auto st = vsr::element_type_from_name(storage);
             if (!st) throw py::value_error("unknown storage '" + storage + "'; expected 'f32', 'f16' or 'bf16'");
             return unwrap(vsr::GpuFlatIndex::create(dim, mt, *st, device));
           }),
           py::arg("dim"), py::arg("metric") = "ip", py::arg("storage") = "f16", py::arg("device") = 0)
      .def_property_readonly("dim", &vsr::GpuFlatIndex::dim)
      .def_property_readonly("device", &vsr::GpuFlatIndex::device)
      .def_property_readonly("metric", [](const vsr::GpuFlatIndex& s) { return std::string(vsr::metric_name(s.metric())); })
      .def_property_readonly("storage", [](const vsr::GpuFlatIndex& s) { return std::string(vsr::element_type_name(s.storage())); })
      .def("__len__", &vsr::GpuFlatIndex::size)
      .def(
          "add",
          [](vsr::GpuFlatIndex& self, const py::handle& vectors, const py::handle& ids) {
            std::optional<py::array_t<std::int64_t, py::array::c_style>> id_arr;
            if (is_cuda_array(vectors)) {
              DLPackView view(vectors);
              std::size_t n = check_cuda_matrix(view, self, "vectors");
              if (!ids.is_none()) id_arr = as_ids(ids, long(n), "ids");
              vsr::ElementType type = element_type_of(view.tensor().dtype);
              py::gil_scoped_release release;
              check(self.add(view.data(), type, vsr::Memory::device, n, id_arr ? id_arr->data() : nullptr));
              return;
            }
            auto x = as_matrix(vectors, self.dim(), "vectors");
            std::size_t n = std::size_t(x.shape(0));
            if (!ids.is_none()) id_arr = as_ids(ids, long(n), "ids");
            py::gil_scoped_release release;
            check(self.add(x.data(), vsr::ElementType::f32, vsr::Memory::host, n, id_arr ? id_arr->data() : nullptr));
          },
          py::arg("vectors"), py::arg("ids") = py::none(),
          "Adds numpy vectors or CUDA arrays (DLPack: torch, CuPy) of float32/float16/bfloat16.")
      .def(
          "search",
          [](const vsr::GpuFlatIndex& self, const py::handle& queries, long k) -> py::tuple {
            if (k <= 0) throw py::value_error("k must be positive, got " + std::to_string(k));
            std::size_t kk = std::size_t(k);
            if (is_cuda_array(queries)) {
              DLPackView view(queries);
              std::size_t nq = check_cuda_matrix(view, self, "queries");
              vsr::ElementType type = element_type_of(view.tensor().dtype);
              std::vector<std::int64_t> shape{std::int64_t(nq), std::int64_t(kk)};
              DeviceArray scores = make_device_array(self.device(), DLDataType{kDLFloat, 32, 1}, shape, nq * kk * 4);
              DeviceArray ids = make_device_array(self.device(), DLDataType{kDLInt, 64, 1}, shape, nq * kk * 8);
              {
                py::gil_scoped_release release;
                check(self.search(view.data(), type, vsr::Memory::device, nq, kk, static_cast<float*>(scores.buffer.get()),
                                  static_cast<vsr::idx_t*>(ids.buffer.get()), vsr::Memory::device, nullptr, nullptr));
              }
              return py::make_tuple(std::move(scores), std::move(ids));
            }
            auto q = as_matrix(queries, self.dim(), "queries");
            std::size_t nq = std::size_t(q.shape(0));
            py::array_t<float> scores({nq, kk});
            py::array_t<std::int64_t> ids({nq, kk});
            float* s = scores.mutable_data();
            std::int64_t* i = ids.mutable_data();
            {
              py::gil_scoped_release release;
              check(self.search(q.data(), vsr::ElementType::f32, vsr::Memory::host, nq, kk, s, i, vsr::Memory::host,
                                nullptr, nullptr));
            }
            return py::make_tuple(scores, ids);
          },
          py::arg("queries"), py::arg("k"),
          "numpy queries -> numpy (scores, ids); CUDA queries -> CUDA DeviceArrays (use torch.from_dlpack).");
}

}  // namespace vsr_py

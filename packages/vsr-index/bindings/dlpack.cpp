#include "dlpack.hpp"

#include <string>

namespace vsr_py {

namespace {
constexpr const char* kCapsuleName = "dltensor";
constexpr const char* kUsedCapsuleName = "used_dltensor";

// Keeps a DeviceArray's buffer and shape alive for as long as a consumer holds the tensor.
struct ExportContext {
  std::shared_ptr<void> buffer;
  std::vector<std::int64_t> shape;
  DLManagedTensor managed{};
};

void delete_export(DLManagedTensor* self) { delete static_cast<ExportContext*>(self->manager_ctx); }

// Capsule destructor: frees the tensor only if no consumer took ownership (renamed the capsule).
void capsule_destructor(PyObject* capsule) {
  if (PyCapsule_IsValid(capsule, kCapsuleName)) {
    auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, kCapsuleName));
    if (managed && managed->deleter) managed->deleter(managed);
  }
}
}  // namespace

DLPackView::DLPackView(const py::handle& obj) {
  if (!py::hasattr(obj, "__dlpack__")) throw py::type_error("object does not support the DLPack protocol");
  py::object capsule = obj.attr("__dlpack__")();
  if (!PyCapsule_IsValid(capsule.ptr(), kCapsuleName))
    throw py::type_error("__dlpack__ did not return an unused 'dltensor' capsule");
  managed_ = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), kCapsuleName));
  // Renaming marks the capsule consumed: we now own the tensor and call its deleter.
  PyCapsule_SetName(capsule.ptr(), kUsedCapsuleName);
}

DLPackView::~DLPackView() {
  if (managed_ && managed_->deleter) managed_->deleter(managed_);
}

const void* DLPackView::data() const {
  return static_cast<const char*>(tensor().data) + tensor().byte_offset;
}

bool DLPackView::c_contiguous() const {
  const DLTensor& t = tensor();
  if (t.strides == nullptr) return true;
  std::int64_t expected = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    if (t.shape[i] != 1 && t.strides[i] != expected) return false;
    expected *= t.shape[i];
  }
  return true;
}

std::optional<DLDevice> dlpack_device(const py::handle& obj) {
  if (!py::hasattr(obj, "__dlpack_device__")) return std::nullopt;
  py::tuple dev = obj.attr("__dlpack_device__")();
  return DLDevice{dev[0].cast<std::int32_t>(), dev[1].cast<std::int32_t>()};
}

void bind_dlpack(py::module_& m) {
  py::class_<DeviceArray>(m, "DeviceArray",
                          "A GPU result array; pass it to torch.from_dlpack / cupy.from_dlpack (no copy).")
      .def_property_readonly("shape", [](const DeviceArray& a) {
        py::tuple t(a.shape.size());
        for (std::size_t i = 0; i < a.shape.size(); ++i) t[i] = a.shape[i];
        return t;
      })
      .def_property_readonly("dtype", [](const DeviceArray& a) {
        if (a.dtype.code == kDLFloat) return std::string("float") + std::to_string(a.dtype.bits);
        return std::string("int") + std::to_string(a.dtype.bits);
      })
      .def("__dlpack_device__", [](const DeviceArray& a) { return py::make_tuple(a.device.device_type, a.device.device_id); })
      .def(
          "__dlpack__",
          [](const DeviceArray& a, const py::object& /*stream*/, const py::kwargs&) {
            // Results are complete when search returns (it runs on the legacy default stream and
            // synchronises), so no cross-stream event is needed.
            auto* ctx = new ExportContext{a.buffer, a.shape, {}};
            DLTensor& t = ctx->managed.dl_tensor;
            t.data = a.buffer.get();
            t.device = a.device;
            t.ndim = std::int32_t(ctx->shape.size());
            t.dtype = a.dtype;
            t.shape = ctx->shape.data();
            t.strides = nullptr;
            t.byte_offset = 0;
            ctx->managed.manager_ctx = ctx;
            ctx->managed.deleter = delete_export;
            return py::reinterpret_steal<py::object>(PyCapsule_New(&ctx->managed, kCapsuleName, capsule_destructor));
          },
          py::arg("stream") = py::none());
}

}  // namespace vsr_py

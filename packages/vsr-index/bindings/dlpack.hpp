// The DLPack ABI (data structures of the DLPack specification, v0.8 "dltensor" capsules), and
// helpers to consume and produce DLPack tensors from Python objects.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

namespace vsr_py {

namespace py = pybind11;

enum DLDeviceType : std::int32_t { kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13 };
enum DLDataTypeCode : std::uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4 };

struct DLDevice {
  std::int32_t device_type;
  std::int32_t device_id;
};
struct DLDataType {
  std::uint8_t code;
  std::uint8_t bits;
  std::uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  std::int32_t ndim;
  DLDataType dtype;
  std::int64_t* shape;
  std::int64_t* strides;
  std::uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

// A borrowed view of a DLPack tensor; releases the producer's tensor when destroyed.
class DLPackView {
 public:
  // Calls obj.__dlpack__() and takes the capsule. Raises TypeError when obj has no __dlpack__.
  explicit DLPackView(const py::handle& obj);
  ~DLPackView();
  DLPackView(const DLPackView&) = delete;
  DLPackView& operator=(const DLPackView&) = delete;

  const DLTensor& tensor() const { return managed_->dl_tensor; }
  const void* data() const;
  bool c_contiguous() const;

 private:
  DLManagedTensor* managed_ = nullptr;
};

// (device_type, device_id) of obj.__dlpack_device__(), or nullopt when obj has none.
std::optional<DLDevice> dlpack_device(const py::handle& obj);

// Owns a device buffer and exposes it through __dlpack__ / __dlpack_device__.
struct DeviceArray {
  std::shared_ptr<void> buffer;  // deleter frees the device memory
  DLDevice device{};
  DLDataType dtype{};
  std::vector<std::int64_t> shape;
};

void bind_dlpack(py::module_& m);

}  // namespace vsr_py

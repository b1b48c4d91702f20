#include "common.hpp"

#include "vsr/index.hpp"
#include "vsr/kernels.hpp"
#include "vsr/simd.hpp"

namespace vsr_py {

void raise_error(const vsr::Error& e) {
  switch (e.code) {
    case vsr::ErrorCode::invalid_argument: throw py::value_error(e.message);
    case vsr::ErrorCode::out_of_range: throw py::index_error(e.message);
    case vsr::ErrorCode::not_found: throw py::key_error(e.message);
    case vsr::ErrorCode::io_error: PyErr_SetString(PyExc_OSError, e.message.c_str()); throw py::error_already_set();
    case vsr::ErrorCode::corrupt_file: throw py::value_error("corrupt index file: " + e.message);
    case vsr::ErrorCode::unsupported: PyErr_SetString(PyExc_NotImplementedError, e.message.c_str()); throw py::error_already_set();
  }
  throw std::runtime_error(e.message);
}

static std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

py::array_t<float, py::array::c_style> as_matrix(const py::handle& obj, std::size_t dim, const char* what) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(std::string(what) + " must be an array-like of numbers");
  char kind = arr.dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u')
    throw py::type_error(std::string(what) + " must have a numeric dtype, got " + std::string(py::str(arr.dtype())));
  if (arr.ndim() == 1) arr = arr.attr("reshape")(1, -1);
  if (arr.ndim() != 2 || std::size_t(arr.shape(1)) != dim)
    throw py::value_error(std::string(what) + " must have shape (n, " + std::to_string(dim) + "), got " +
                          shape_str(arr));
  return py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(arr);
}

py::array_t<std::int64_t, py::array::c_style> as_ids(const py::handle& obj, long n, const char* what) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(std::string(what) + " must be an array-like of integers");
  char kind = arr.dtype().kind();
  if (kind != 'i' && kind != 'u')
    throw py::type_error(std::string(what) + " must have an integer dtype, got " + std::string(py::str(arr.dtype())));
  if (arr.ndim() != 1 || (n >= 0 && arr.shape(0) != n))
    throw py::value_error(std::string(what) + " must have shape (" + (n >= 0 ? std::to_string(n) : "n") +
                          ",), got " + shape_str(arr));
  return py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
}

void bind_common(py::module_& m) {
  // Base of every index kind; methods shared by all kinds are added to it by their binding files.
  py::class_<vsr::Index>(m, "Index");
  m.def("simd_info", [] {
    const vsr::CpuFeatures& f = vsr::cpu_features();
    py::dict cpu;
    cpu["avx2"] = f.avx2; cpu["fma"] = f.fma; cpu["f16c"] = f.f16c;
    cpu["avx512f"] = f.avx512f; cpu["avx512bw"] = f.avx512bw; cpu["avx512vl"] = f.avx512vl;
    cpu["avx512dq"] = f.avx512dq; cpu["avx512vnni"] = f.avx512vnni; cpu["avx512bf16"] = f.avx512bf16;
    cpu["neon"] = f.neon;
    py::list compiled, available;
    for (auto isa : {vsr::Isa::scalar, vsr::Isa::avx2, vsr::Isa::avx512, vsr::Isa::neon}) {
      if (vsr::isa_compiled(isa)) compiled.append(std::string(vsr::isa_name(isa)));
      if (vsr::isa_available(isa)) available.append(std::string(vsr::isa_name(isa)));
    }
    py::dict out;
    out["cpu"] = cpu;
    out["compiled"] = compiled;
    out["available"] = available;
    out["selected"] = std::string(vsr::isa_name(vsr::best_isa()));
    return out;
  }, "CPU features, kernel sets compiled in / usable here, and the one chosen by default.");
}

}  // namespace vsr_py

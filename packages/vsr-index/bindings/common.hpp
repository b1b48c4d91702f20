// Helpers shared by the binding files: error translation, numpy argument checks, and the
// Python base class `Index` that every index kind derives from.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>

#include "vsr/codec.hpp"
#include "vsr/common.hpp"
#include "vsr/index.hpp"

namespace vsr_py {

namespace py = pybind11;

// Raises the Python exception matching an engine error (safe with the GIL released).
[[noreturn]] void raise_error(const vsr::Error& e);

inline void check(const vsr::Status& s) {
  if (!s.ok()) raise_error(s.error());
}
template <typename T>
T unwrap(vsr::Result<T> r) {
  if (!r.ok()) raise_error(r.error());
  return std::move(r).value();
}

// A C-contiguous float32 2-D array of `dim` columns; 1-D arrays of length dim are one row.
// float32 C-contiguous input is used as is; other integer/float dtypes and layouts are converted;
// anything else raises TypeError naming `what`.
py::array_t<float, py::array::c_style> as_matrix(const py::handle& obj, std::size_t dim, const char* what);
// A C-contiguous int64 1-D array of `n` ids (n = -1 for any length); integer dtypes only.
py::array_t<std::int64_t, py::array::c_style> as_ids(const py::handle& obj, long n, const char* what);
// An id filter from the allow= / deny= arguments (at most one may be given).
vsr::IdFilter make_filter(const py::handle& allow, const py::handle& deny);
// Metric and storage names ("ip", "cosine", "l2"; "f32", "f16", "bf16", "int8"); ValueError otherwise.
vsr::Metric parse_metric(const std::string& name);
vsr::Storage parse_storage(const std::string& name);
// num_threads=None -> 0 (the index default); negative raises.
int thread_count(const py::handle& num_threads);
// str or os.PathLike -> filesystem path string.
std::string as_path(const py::handle& path);

// Every index class is held by shared_ptr so sessions can keep the index they search alive.
using IndexClass = py::class_<vsr::Index, std::shared_ptr<vsr::Index>>;

void bind_common(py::module_& m);
void bind_flat(py::module_& m);
void bind_gpu(py::module_& m);
void bind_session(py::module_& m);
void bind_graph(py::module_& m);

}  // namespace vsr_py

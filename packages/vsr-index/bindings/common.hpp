// Helpers shared by the binding files: error translation and numpy argument checks.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "vsr/common.hpp"

namespace vsr_py {

namespace py = pybind11;

// Raises the Python exception matching an engine error.
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
// Other float dtypes are converted; non-numeric input raises TypeError naming `what`.
py::array_t<float, py::array::c_style> as_matrix(const py::handle& obj, std::size_t dim, const char* what);
// A C-contiguous int64 1-D array of `n` ids (n = -1 for any length).
py::array_t<std::int64_t, py::array::c_style> as_ids(const py::handle& obj, long n, const char* what);

void bind_common(py::module_& m);
void bind_flat(py::module_& m);
void bind_session(py::module_& m);

}  // namespace vsr_py

#include "common.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "vsr_index C++ core";
  vsr_py::bind_common(m);
  vsr_py::bind_flat(m);
  vsr_py::bind_gpu(m);
  vsr_py::bind_graph(m);
  vsr_py::bind_session(m);
}

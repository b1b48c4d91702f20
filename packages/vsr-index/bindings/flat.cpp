#include <memory>

#include "common.hpp"
#include "vsr/flat_index.hpp"

namespace vsr_py {

namespace {

vsr::Metric parse_metric(const std::string& name) {
  auto m = vsr::metric_from_name(name);
  if (!m) throw py::value_error("unknown metric '" + name + "'; expected one of 'ip', 'cosine', 'l2'");
  return *m;
}

}  // namespace

void bind_flat(py::module_& m) {
  py::class_<vsr::FlatIndex, vsr::Index>(m, "FlatIndex")
      .def(py::init([](std::size_t dim, const std::string& metric) {
             return std::unique_ptr<vsr::FlatIndex>(unwrap(vsr::FlatIndex::create(dim, parse_metric(metric))));
           }),
           py::arg("dim"), py::arg("metric") = "ip")
      .def_property_readonly("dim", &vsr::FlatIndex::dim)
      .def_property_readonly("metric", [](const vsr::FlatIndex& self) { return std::string(vsr::metric_name(self.metric())); })
      .def_property_readonly("isa", [](const vsr::FlatIndex& self) { return std::string(vsr::isa_name(self.isa())); })
      .def("set_isa", [](vsr::FlatIndex& self, const std::string& name) {
             auto isa = vsr::isa_from_name(name);
             if (!isa) throw py::value_error("unknown ISA '" + name + "'; expected scalar, avx2, avx512 or neon");
             check(self.set_isa(*isa));
           })
      .def_property("num_threads", &vsr::FlatIndex::num_threads, &vsr::FlatIndex::set_num_threads)
      .def("__len__", &vsr::FlatIndex::size)
      .def("add", [](vsr::FlatIndex& self, const py::handle& vectors, const py::handle& ids) {
             auto x = as_matrix(vectors, self.dim(), "vectors");
             std::size_t n = std::size_t(x.shape(0));
             if (ids.is_none()) {
               py::gil_scoped_release release;
               check(self.add(x.data(), n, nullptr));
             } else {
               auto id = as_ids(ids, long(n), "ids");
               py::gil_scoped_release release;
               check(self.add(x.data(), n, id.data()));
             }
           },
           py::arg("vectors"), py::arg("ids") = py::none())
      .def("search", [](const vsr::FlatIndex& self, const py::handle& queries, long k) {
             if (k <= 0) throw py::value_error("k must be positive, got " + std::to_string(k));
             auto q = as_matrix(queries, self.dim(), "queries");
             std::size_t nq = std::size_t(q.shape(0));
             py::array_t<float> scores({nq, std::size_t(k)});
             py::array_t<std::int64_t> ids({nq, std::size_t(k)});
             float* s = scores.mutable_data();
             std::int64_t* i = ids.mutable_data();
             {
               py::gil_scoped_release release;
               check(self.search(q.data(), nq, std::size_t(k), s, i, {}));
             }
             return py::make_tuple(scores, ids);
           },
           py::arg("queries"), py::arg("k"));
}

}  // namespace vsr_py

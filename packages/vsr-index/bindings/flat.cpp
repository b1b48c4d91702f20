#include <memory>

#include "common.hpp"
#include "vsr/flat_index.hpp"

namespace vsr_py {

namespace {

std::size_t parse_rerank(const py::handle& rerank) {
  if (py::isinstance<py::bool_>(rerank) || !py::isinstance<py::int_>(rerank))
    throw py::type_error("rerank must be an int factor (0 = off, e.g. 4 = re-rank the 4*k best exactly)");
  long r = rerank.cast<long>();
  if (r < 0) throw py::value_error("rerank must be >= 0, got " + std::to_string(r));
  return std::size_t(r);
}

}  // namespace

void bind_flat(py::module_& m) {
  py::class_<vsr::FlatIndex, vsr::Index, std::shared_ptr<vsr::FlatIndex>>(m, "FlatIndex", R"doc(Exact (brute-force) index.

FlatIndex(dim, metric="ip", storage="f32", rerank=0)
  metric:  "ip" (inner product), "cosine" (vectors and queries normalised), "l2" (squared distance)
  storage: "f32", "f16", "bf16" or "int8" (per-vector scale) for the scanned vectors
  rerank:  with a compressed storage, keep float32 originals and re-rank the rerank*k best exactly)doc")
      .def(py::init([](std::size_t dim, const std::string& metric, const std::string& storage, const py::handle& rerank) {
             vsr::FlatOptions o;
             o.metric = parse_metric(metric);
             o.storage = parse_storage(storage);
             o.rerank = parse_rerank(rerank);
             return std::shared_ptr<vsr::FlatIndex>(unwrap(vsr::FlatIndex::make(dim, o)));
           }),
           py::arg("dim"), py::arg("metric") = "ip", py::arg("storage") = "f32", py::arg("rerank") = 0)
      .def_static("load", [](const py::handle& path, bool mmap, bool verify) {
             const std::string p = as_path(path);
             std::unique_ptr<vsr::FlatIndex> index;
             {
               py::gil_scoped_release release;
               index = unwrap(vsr::FlatIndex::load(p, mmap, verify));
             }
             return std::shared_ptr<vsr::FlatIndex>(std::move(index));
           },
           py::arg("path"), py::arg("mmap") = true, py::arg("verify") = true,
           "Loads a saved flat index. mmap=True serves vectors from the mapped file (larger than memory is "
           "fine; the first add/remove copies them into memory). verify=True checks every checksum now.")
      .def_property_readonly("storage", [](const vsr::FlatIndex& self) { return std::string(vsr::storage_name(self.storage())); })
      .def_property_readonly("rerank", &vsr::FlatIndex::rerank)
      .def_property_readonly("is_mapped", &vsr::FlatIndex::is_mapped)
      .def_property_readonly("isa", [](const vsr::FlatIndex& self) { return std::string(vsr::isa_name(self.isa())); })
      .def("set_isa", [](vsr::FlatIndex& self, const std::string& name) {
             auto isa = vsr::isa_from_name(name);
             if (!isa) throw py::value_error("unknown ISA '" + name + "'; expected one of " + vsr::isa_names());
             check(self.set_isa(*isa));
           },
           py::arg("name"), "Forces this index's kernel set (e.g. 'scalar' to compare against the reference).")
      .def_property("num_threads", &vsr::FlatIndex::num_threads, [](vsr::FlatIndex& self, const py::handle& n) {
             self.set_num_threads(thread_count(n));
           },
           "Default search threads (0 = all cores); search(num_threads=...) overrides it per call.");
}

}  // namespace vsr_py

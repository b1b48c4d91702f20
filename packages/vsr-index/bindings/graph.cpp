// Python binding of GraphIndex; the shared API (add, search, remove, save, sessions) comes from Index.
#include <memory>
#include <string>

#include "common.hpp"
#include "vsr/graph_index.hpp"

namespace vsr_py {

namespace {

std::size_t positive(long v, const char* what) {
  if (v <= 0) throw py::value_error(std::string(what) + " must be positive, got " + std::to_string(v));
  return std::size_t(v);
}

}  // namespace

void bind_graph(py::module_& m) {
  py::class_<vsr::GraphIndex, vsr::Index, std::shared_ptr<vsr::GraphIndex>>(m, "GraphIndex", R"doc(Approximate index: an HNSW graph over (optionally compressed) vectors.

GraphIndex(dim, metric="ip", storage="f32", M=16, ef_construction=200, ef_search=64, seed=42)
  metric:          "ip", "cosine" (vectors and queries normalised) or "l2" (squared distance)
  storage:         form the graph walk reads: "f32", "f16", "bf16" or "int8"; compressed forms keep
                   float32 originals and re-rank the walk's candidates exactly
  M:               links per node (2M on the bottom layer); more = better recall, more memory
  ef_construction: candidate list size while building; more = better graph, slower build
  ef_search:       candidate list size while searching (settable later); more = better recall, slower)doc")
      .def(py::init([](std::size_t dim, const std::string& metric, const std::string& storage, long M,
                       long ef_construction, long ef_search, std::uint64_t seed) {
             vsr::GraphOptions o;
             o.metric = parse_metric(metric);
             o.storage = parse_storage(storage);
             o.M = positive(M, "M");
             o.ef_construction = positive(ef_construction, "ef_construction");
             o.ef_search = positive(ef_search, "ef_search");
             o.seed = seed;
             return std::shared_ptr<vsr::GraphIndex>(unwrap(vsr::GraphIndex::make(dim, o)));
           }),
           py::arg("dim"), py::arg("metric") = "ip", py::arg("storage") = "f32", py::arg("M") = 16,
           py::arg("ef_construction") = 200, py::arg("ef_search") = 64, py::arg("seed") = 42)
      .def_static("load", [](const py::handle& path, bool mmap, bool verify) {
             const std::string p = as_path(path);
             std::unique_ptr<vsr::GraphIndex> index;
             {
               py::gil_scoped_release release;
               index = unwrap(vsr::GraphIndex::load(p, mmap, verify));
             }
             return std::shared_ptr<vsr::GraphIndex>(std::move(index));
           },
           py::arg("path"), py::arg("mmap") = true, py::arg("verify") = true,
           "Loads a saved graph index. mmap=True serves vectors and bottom-layer links from the mapped file; "
           "verify=True checks every checksum now.")
      .def_property_readonly("storage", [](const vsr::GraphIndex& self) { return std::string(vsr::storage_name(self.options().storage)); })
      .def_property_readonly("M", [](const vsr::GraphIndex& self) { return self.options().M; })
      .def_property_readonly("ef_construction", [](const vsr::GraphIndex& self) { return self.options().ef_construction; })
      .def_property("ef_search", &vsr::GraphIndex::ef_search, [](vsr::GraphIndex& self, long ef) {
             check(self.set_ef_search(positive(ef, "ef_search")));
           })
      .def_property(
          "warm_ef_search",
          [](const vsr::GraphIndex& self) -> py::object {
            const std::size_t ef = self.warm_ef_search();
            return ef == 0 ? py::none() : py::cast(ef);
          },
          [](vsr::GraphIndex& self, const py::handle& ef) {
            if (ef.is_none()) return check(self.set_warm_ef_search(0));
            if (!py::isinstance<py::int_>(ef)) throw py::type_error("warm_ef_search must be an int or None");
            check(self.set_warm_ef_search(positive(ef.cast<long>(), "warm_ef_search")));
          },
          "Candidate list size of warm-started searches (session and refine_group refines that start from "
          "the cached pool); None = ef_search. A walk that starts next to the answer needs a narrower beam "
          "for the same recall. Not saved with the index.")
      .def("search_counted", [](const vsr::GraphIndex& self, const py::handle& queries, long k, const py::handle& num_threads) {
             const std::size_t kk = positive(k, "k");
             auto q = as_matrix(queries, self.dim(), "queries");
             const std::size_t nq = std::size_t(q.shape(0));
             py::array_t<float> scores({nq, kk});
             py::array_t<std::int64_t> ids({nq, kk});
             float* s = scores.mutable_data();
             std::int64_t* i = ids.mutable_data();
             vsr::SearchStats stats;
             vsr::SearchParams params;
             params.num_threads = thread_count(num_threads);
             params.stats = &stats;
             {
               py::gil_scoped_release release;
               check(self.search(q.data(), nq, kk, s, i, params));
             }
             return py::make_tuple(scores, ids, stats.distances.load());
           },
           py::arg("queries"), py::arg("k"), py::kw_only(), py::arg("num_threads") = py::none(),
           "search() that also returns the number of distances it computed (for benchmarks).")
      .def_property_readonly("is_mapped", &vsr::GraphIndex::is_mapped)
      .def_property_readonly("link_count", &vsr::GraphIndex::link_count)
      .def_property("num_threads", &vsr::GraphIndex::num_threads, [](vsr::GraphIndex& self, const py::handle& n) {
             self.set_num_threads(thread_count(n));
           },
           "Threads for builds, removals and searches (0 = all cores); search(num_threads=...) overrides it.");
}

}  // namespace vsr_py

#include "common.hpp"

#include "vsr/io.hpp"
#include "vsr/kernels.hpp"
#include "vsr/simd.hpp"

namespace vsr_py {

namespace {
// Plain C++ exceptions, turned into OSError / NotImplementedError by a translator that runs with
// the GIL held: raise_error may be called while the GIL is released, where touching Python
// error state would crash.
struct OsError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct Unsupported : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct OutOfMemory : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace

void raise_error(const vsr::Error& e) {
  switch (e.code) {
    case vsr::ErrorCode::invalid_argument: throw py::value_error(e.message);
    case vsr::ErrorCode::out_of_range: throw py::index_error(e.message);
    case vsr::ErrorCode::not_found: throw py::key_error(e.message);
    case vsr::ErrorCode::io_error: throw OsError(e.message);
    case vsr::ErrorCode::corrupt_file: throw py::value_error("corrupt index file: " + e.message);
    case vsr::ErrorCode::unsupported: throw Unsupported(e.message);
    case vsr::ErrorCode::out_of_memory: throw OutOfMemory(e.message);
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
  if (arr.ndim() == 0) arr = arr.attr("reshape")(1);
  char kind = arr.dtype().kind();
  if (arr.size() == 0 && kind == 'f') kind = 'i';  // [] parses as float64; an empty list is fine
  if (kind != 'i' && kind != 'u')
    throw py::type_error(std::string(what) + " must have an integer dtype, got " + std::string(py::str(arr.dtype())));
  if (arr.ndim() != 1 || (n >= 0 && arr.shape(0) != n))
    throw py::value_error(std::string(what) + " must have shape (" + (n >= 0 ? std::to_string(n) : "n") +
                          ",), got " + shape_str(arr));
  return py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
}

vsr::IdFilter make_filter(const py::handle& allow, const py::handle& deny) {
  vsr::IdFilter f;
  if (!allow.is_none() && !deny.is_none()) throw py::value_error("give allow= or deny=, not both");
  const py::handle& src = allow.is_none() ? deny : allow;
  if (src.is_none()) return f;
  auto ids = as_ids(src, -1, allow.is_none() ? "deny" : "allow");
  f.mode = allow.is_none() ? vsr::IdFilter::Mode::deny : vsr::IdFilter::Mode::allow;
  f.ids.reserve(std::size_t(ids.size()));
  const std::int64_t* p = ids.data();
  for (py::ssize_t i = 0; i < ids.size(); ++i) f.ids.insert(p[i]);
  return f;
}

int thread_count(const py::handle& num_threads) {
  if (num_threads.is_none()) return 0;
  long n = num_threads.cast<long>();
  if (n < 0 || n > 4096) throw py::value_error("num_threads must be in [0, 4096] (0 = all cores), got " + std::to_string(n));
  return int(n);
}

std::string as_path(const py::handle& path) {
  py::object fs = py::module_::import("os").attr("fspath")(path);
  if (!py::isinstance<py::str>(fs)) throw py::type_error("path must be a str or os.PathLike of str");
  return fs.cast<std::string>();
}

namespace {

py::tuple search(const vsr::Index& self, const py::handle& queries, long k, const py::handle& allow,
                 const py::handle& deny, const py::handle& num_threads) {
  if (k <= 0) throw py::value_error("k must be positive, got " + std::to_string(k));
  auto q = as_matrix(queries, self.dim(), "queries");
  vsr::IdFilter filter = make_filter(allow, deny);
  vsr::SearchParams params;
  params.filter = &filter;
  params.num_threads = thread_count(num_threads);
  const std::size_t nq = std::size_t(q.shape(0));
  py::array_t<float> scores({nq, std::size_t(k)});
  py::array_t<std::int64_t> ids({nq, std::size_t(k)});
  float* s = scores.mutable_data();
  std::int64_t* i = ids.mutable_data();
  {
    py::gil_scoped_release release;
    check(self.search(q.data(), nq, std::size_t(k), s, i, params));
  }
  return py::make_tuple(scores, ids);
}

py::tuple range_search(const vsr::Index& self, const py::handle& queries, float radius, const py::handle& allow,
                       const py::handle& deny, const py::handle& num_threads) {
  auto q = as_matrix(queries, self.dim(), "queries");
  vsr::IdFilter filter = make_filter(allow, deny);
  vsr::SearchParams params;
  params.filter = &filter;
  params.num_threads = thread_count(num_threads);
  vsr::RangeResult r;
  {
    py::gil_scoped_release release;
    check(self.range_search(q.data(), std::size_t(q.shape(0)), radius, &r, params));
  }
  py::array_t<std::int64_t> lims(py::ssize_t(r.lims.size()));
  std::copy(r.lims.begin(), r.lims.end(), lims.mutable_data());
  py::array_t<float> scores(py::ssize_t(r.scores.size()));
  std::copy(r.scores.begin(), r.scores.end(), scores.mutable_data());
  py::array_t<std::int64_t> ids(py::ssize_t(r.ids.size()));
  std::copy(r.ids.begin(), r.ids.end(), ids.mutable_data());
  return py::make_tuple(lims, scores, ids);
}

}  // namespace

vsr::Metric parse_metric(const std::string& name) {
  auto m = vsr::metric_from_name(name);
  if (!m) throw py::value_error("unknown metric '" + name + "'; expected one of 'ip', 'cosine', 'l2'");
  return *m;
}

vsr::Storage parse_storage(const std::string& name) {
  auto s = vsr::storage_from_name(name);
  if (!s) throw py::value_error("unknown storage '" + name + "'; expected one of 'f32', 'f16', 'bf16', 'int8'");
  return *s;
}

void bind_common(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const OsError& e) {
      PyErr_SetString(PyExc_OSError, e.what());
    } catch (const Unsupported& e) {
      PyErr_SetString(PyExc_NotImplementedError, e.what());
    } catch (const OutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });
  m.def("simd_info", [] {
    const vsr::CpuFeatures& f = vsr::cpu_features();
    py::dict cpu;
    cpu["avx2"] = f.avx2; cpu["fma"] = f.fma; cpu["f16c"] = f.f16c;
    cpu["avx512f"] = f.avx512f; cpu["avx512bw"] = f.avx512bw; cpu["avx512vl"] = f.avx512vl;
    cpu["avx512dq"] = f.avx512dq; cpu["avx512vnni"] = f.avx512vnni; cpu["avx512bf16"] = f.avx512bf16;
    cpu["neon"] = f.neon;
    py::list compiled, available;
    for (auto isa : vsr::kAllIsas) {
      if (vsr::isa_compiled(isa)) compiled.append(std::string(vsr::isa_name(isa)));
      if (vsr::isa_available(isa)) available.append(std::string(vsr::isa_name(isa)));
    }
    py::dict out;
    out["cpu"] = cpu;
    out["compiled"] = compiled;
    out["available"] = available;
    out["best"] = std::string(vsr::isa_name(vsr::best_isa()));
    out["selected"] = std::string(vsr::isa_name(vsr::default_isa()));
    return out;
  }, "CPU features, kernel sets compiled in / usable here, the best one, and the one new indexes use.");

  m.def("set_isa", [](const py::object& name) {
    if (name.is_none()) {
      vsr::reset_default_isa();
      return;
    }
    const std::string s = name.cast<std::string>();
    auto isa = vsr::isa_from_name(s);
    if (!isa) throw py::value_error("unknown ISA '" + s + "'; expected one of " + vsr::isa_names());
    if (!vsr::set_default_isa(*isa))
      throw py::value_error("ISA '" + s + "' is not available on this CPU/build; available: see simd_info()");
  }, py::arg("name"),
  "Kernel set for indexes created from now on (None: the best for this CPU). Existing indexes keep "
  "theirs; FlatIndex.set_isa changes one index.");

  m.def("index_kind", [](const py::handle& path) {
    const std::string p = as_path(path);
    vsr::io::IndexKind kind;
    {
      py::gil_scoped_release release;
      kind = unwrap(vsr::io::peek_kind(p));
    }
    return std::string(vsr::io::index_kind_name(kind));
  }, py::arg("path"), "The index kind ('flat', 'graph') stored in an index file.");

  IndexClass(m, "Index", R"doc(Base class of every index kind: the shared faiss-like API.

Scores follow the metric: similarity for "ip" and "cosine" (best first, descending), squared
distance for "l2" (ascending). Missing results have id -1.)doc")
      .def_property_readonly("dim", &vsr::Index::dim)
      .def_property_readonly("metric", [](const vsr::Index& self) { return std::string(vsr::metric_name(self.metric())); })
      .def_property_readonly("kind", [](const vsr::Index& self) { return std::string(self.kind_name()); })
      .def("__len__", &vsr::Index::size)
      .def("add", [](vsr::Index& self, const py::handle& vectors, const py::handle& ids) {
             auto x = as_matrix(vectors, self.dim(), "vectors");
             const std::size_t n = std::size_t(x.shape(0));
             if (ids.is_none()) {
               py::gil_scoped_release release;
               check(self.add(x.data(), n, nullptr));
             } else {
               auto id = as_ids(ids, long(n), "ids");
               py::gil_scoped_release release;
               check(self.add(x.data(), n, id.data()));
             }
           },
           py::arg("vectors"), py::arg("ids") = py::none(),
           "Adds (n, dim) vectors; ids (n,) int64, default: consecutive after the largest id so far.")
      .def("search", &search, py::arg("queries"), py::arg("k"), py::kw_only(), py::arg("allow") = py::none(),
           py::arg("deny") = py::none(), py::arg("num_threads") = py::none(),
           "k best results per query -> (scores (nq, k) float32, ids (nq, k) int64). allow= / deny= restrict "
           "results to / away from the given ids; num_threads=None uses the index default.")
      .def("range_search", &range_search, py::arg("queries"), py::arg("radius"), py::kw_only(),
           py::arg("allow") = py::none(), py::arg("deny") = py::none(), py::arg("num_threads") = py::none(),
           "Every result with score >= radius (ip, cosine) or distance <= radius (l2) -> (lims (nq + 1,), "
           "scores, ids); query i's results, best first, are [lims[i], lims[i + 1]).")
      .def("remove", [](vsr::Index& self, const py::handle& ids) {
             auto id = as_ids(ids, -1, "ids");
             {
               py::gil_scoped_release release;
               check(self.remove(id.data(), std::size_t(id.size())));
             }
             return id.size();
           },
           py::arg("ids"), "Removes the ids (all must be present, each once) and returns how many were removed.")
      .def("score_ids", [](const vsr::Index& self, const py::handle& query, const py::handle& ids) {
             auto q = as_matrix(query, self.dim(), "query");
             if (q.shape(0) != 1) throw py::value_error("score_ids takes one query");
             auto id = as_ids(ids, -1, "ids");
             py::array_t<float> scores(id.size());
             float* s = scores.mutable_data();
             {
               py::gil_scoped_release release;
               check(self.score_ids(q.data(), id.data(), std::size_t(id.size()), s));
             }
             return scores;
           },
           py::arg("query"), py::arg("ids"), "Scores of one query against the listed ids (exact where possible).")
      .def("reconstruct", [](const vsr::Index& self, const py::handle& ids) {
             auto id = as_ids(ids, -1, "ids");
             const std::size_t n = std::size_t(id.size());
             py::array_t<float> rows({py::ssize_t(n), py::ssize_t(self.dim())});
             float* out = rows.mutable_data();
             {
               py::gil_scoped_release release;
               check(self.reconstruct(id.data(), n, out));
             }
             return rows;
           },
           py::arg("ids"),
           "Stored vectors of the ids, in order -> (n, dim) float32. Exact float32 rows for f32 storage or "
           "when float32 originals are kept (flat rerank > 0, every compressed graph index); decoded, so "
           "approximate, for compressed flat storage without rerank. Cosine indexes return the normalised "
           "rows they store. Unknown ids raise KeyError naming them.")
      .def("save", [](const vsr::Index& self, const py::handle& path) {
             const std::string p = as_path(path);
             py::gil_scoped_release release;
             check(self.save(p));
           },
           py::arg("path"), "Writes the index to one file atomically (temp file + fsync + rename).");
}

}  // namespace vsr_py

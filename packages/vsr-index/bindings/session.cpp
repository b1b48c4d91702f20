// Python bindings of multi-turn sessions: Index.session(...), Session.refine(...), Index.refine_group(...).
#include <memory>
#include <optional>
#include <string>

#include <pybind11/stl.h>

#include "common.hpp"
#include "vsr/session.hpp"

namespace vsr_py {

namespace {

py::dict info_dict(const vsr::TurnInfo& info) {
  py::dict d;
  d["path"] = std::string(vsr::turn_path_name(info.path));
  d["distances"] = info.distances;
  d["exact"] = info.exact;
  d["moved"] = info.moved;
  d["margin"] = info.margin;
  d["pool_size"] = info.pool_size;
  return d;
}

std::size_t check_k(long k) {
  if (k <= 0) throw py::value_error("k must be positive, got " + std::to_string(k));
  return std::size_t(k);
}

std::size_t check_pool_size(const std::optional<long>& pool_size) {
  if (!pool_size) return 0;
  if (*pool_size <= 0) throw py::value_error("pool_size must be positive, got " + std::to_string(*pool_size));
  return std::size_t(*pool_size);
}

py::array_t<float> copy_scores(const std::vector<float>& v) {
  py::array_t<float> a(v.size());
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}
py::array_t<std::int64_t> copy_ids(const std::vector<vsr::idx_t>& v) {
  py::array_t<std::int64_t> a(v.size());
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// A session plus a reference to its Python index object, which must outlive it.
struct PySession {
  py::object index;
  std::unique_ptr<vsr::Session> session;
};

}  // namespace

void bind_session(py::module_& m) {
  py::class_<PySession>(m, "Session",
                           "A multi-turn search: the first search ran when it was created; refine() re-uses "
                           "its candidate pool. Create with Index.session(...).")
      .def_property_readonly("scores", [](const PySession& s) { return copy_scores(s.session->scores()); },
                             "Scores of the latest turn's results, best first.")
      .def_property_readonly("ids", [](const PySession& s) { return copy_ids(s.session->ids()); },
                             "Ids of the latest turn's results (-1 where fewer than k were found).")
      .def_property_readonly("info", [](const PySession& s) { return info_dict(s.session->info()); },
                             "How the latest turn was answered: path, distances, exact, moved, margin, pool_size.")
      .def_property_readonly("seen", [](const PySession& s) { return copy_ids(s.session->seen()); },
                             "Every id returned or excluded so far, in the order first returned or excluded.")
      .def_property_readonly("turns", [](const PySession& s) { return s.session->turns(); })
      .def(
          "exclude",
          [](PySession& py_self, const py::handle& ids) {
            auto id = as_ids(ids, -1, "ids");
            py::gil_scoped_release release;
            check(py_self.session->exclude(id.data(), std::size_t(id.size())));
          },
          py::arg("ids"),
          "Never returns these ids in later turns (with or without exclude_seen); they join seen. The "
          "cached pool stays usable: excluded entries are skipped and the proof covers the rest.")
      .def(
          "refine",
          [](PySession& py_self, const py::handle& query, std::optional<long> k) {
            vsr::Session& self = *py_self.session;
            std::size_t kk = k ? check_k(*k) : self.ids().size();
            auto q = as_matrix(query, self.dim(), "query");
            if (q.shape(0) != 1) throw py::value_error("query must be a single vector");
            py::array_t<float> scores(kk);
            py::array_t<std::int64_t> ids(kk);
            float* s = scores.mutable_data();
            std::int64_t* i = ids.mutable_data();
            vsr::TurnInfo info;
            {
              py::gil_scoped_release release;
              check(self.refine(q.data(), kk, s, i, &info));
            }
            return py::make_tuple(scores, ids, info_dict(info));
          },
          py::arg("query"), py::arg("k") = py::none(),
          "Searches with a refined query; returns (scores, ids, info). info['path'] is 'pool' when the "
          "cached pool provably holds the answer, 'warm' or 'cold' when a new search ran.");

  auto index = py::reinterpret_borrow<IndexClass>(m.attr("Index"));
  index.def(
      "session",
      [](const py::object& py_self, const py::handle& query, long k, std::optional<long> pool_size,
         bool exclude_seen, const py::handle& allow, const py::handle& deny, double warm_min_cosine,
         const py::handle& num_threads) {
        const vsr::Index& self = py_self.cast<const vsr::Index&>();
        vsr::SessionOptions opt;
        opt.pool_size = check_pool_size(pool_size);
        opt.exclude_seen = exclude_seen;
        opt.filter = make_filter(allow, deny);
        opt.warm_min_cosine = warm_min_cosine;
        opt.num_threads = thread_count(num_threads);
        std::size_t kk = check_k(k);
        auto q = as_matrix(query, self.dim(), "query");
        if (q.shape(0) != 1) throw py::value_error("query must be a single vector");
        std::unique_ptr<vsr::Session> s;
        {
          py::gil_scoped_release release;
          s = unwrap(vsr::Session::start(self, q.data(), kk, std::move(opt)));
        }
        return PySession{py_self, std::move(s)};
      },
      py::arg("query"), py::arg("k"), py::arg("pool_size") = py::none(), py::arg("exclude_seen") = false,
      py::arg("allow") = py::none(), py::arg("deny") = py::none(), py::arg("warm_min_cosine") = 0.9,
      py::arg("num_threads") = 1,
      "Starts a multi-turn search: runs the first search and caches pool_size candidates (default "
      "max(64, 8k)). exclude_seen=True never returns an id twice. allow=/deny= restrict every turn.");
  index.def(
      "refine_group",
      [](const vsr::Index& self, const py::handle& original, const py::handle& refined, long k,
         std::optional<long> pool_size, const py::handle& allow, const py::handle& deny, double warm_min_cosine,
         const py::handle& num_threads) {
        vsr::GroupOptions opt;
        opt.pool_size = check_pool_size(pool_size);
        opt.warm_min_cosine = warm_min_cosine;
        opt.num_threads = thread_count(num_threads);
        vsr::IdFilter filter = make_filter(allow, deny);
        if (filter.mode != vsr::IdFilter::Mode::none) opt.filter = &filter;
        std::size_t kk = check_k(k);
        auto q0 = as_matrix(original, self.dim(), "original");
        if (q0.shape(0) != 1) throw py::value_error("original must be a single vector");
        auto qs = as_matrix(refined, self.dim(), "refined");
        std::size_t g = std::size_t(qs.shape(0));
        py::array_t<float> scores({g, kk});
        py::array_t<std::int64_t> ids({g, kk});
        float* s = scores.mutable_data();
        std::int64_t* i = ids.mutable_data();
        std::vector<vsr::TurnInfo> infos(g);
        std::uint64_t shared = 0;
        {
          py::gil_scoped_release release;
          check(vsr::refine_group(self, q0.data(), qs.data(), g, kk, opt, s, i, infos.data(), &shared));
        }
        py::list per_query;
        for (const auto& info : infos) per_query.append(info_dict(info));
        py::dict info;
        info["shared_distances"] = shared;
        info["queries"] = per_query;
        return py::make_tuple(scores, ids, info);
      },
      py::arg("original"), py::arg("refined"), py::arg("k"), py::arg("pool_size") = py::none(),
      py::arg("allow") = py::none(), py::arg("deny") = py::none(), py::arg("warm_min_cosine") = 0.9,
      py::arg("num_threads") = 1,
      "Searches G refined queries that share one original query: one pool search for the original, "
      "all G scored against the pool in one blocked pass, a new search only where the bound cannot "
      "prove the pool answer. Returns (scores (G, k), ids (G, k), info) with info['shared_distances'] "
      "and info['queries'] (one dict per refined query).");
}

}  // namespace vsr_py

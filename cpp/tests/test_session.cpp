// Sessions on the exact index: every answer equals an exhaustive search, the pool path is taken
// only when the bound proves it, seen ids never come back, and stale pools are detected.
#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "test_harness.hpp"
#include "vsr/flat_index.hpp"
#include "vsr/session.hpp"

using namespace vsr;

namespace {

std::vector<float> gaussian(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

void normalize_rows(std::vector<float>& x, std::size_t d) {
  for (std::size_t i = 0; i < x.size() / d; ++i) {
    double s = 0;
    for (std::size_t j = 0; j < d; ++j) s += double(x[i * d + j]) * x[i * d + j];
    for (std::size_t j = 0; j < d; ++j) x[i * d + j] = float(x[i * d + j] / std::sqrt(s));
  }
}

// Clustered unit vectors, like embeddings: queries near a cluster have a few close neighbours.
std::vector<float> clustered(std::size_t n, std::size_t d, unsigned seed) {
  auto centers = gaussian(20 * d, seed);
  auto noise = gaussian(n * d, seed + 1);
  std::vector<float> x(n * d);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < d; ++j) x[i * d + j] = centers[(i % 20) * d + j] + 0.6f * noise[i * d + j];
  normalize_rows(x, d);
  return x;
}

// A query at cosine `cos` from q (both unit vectors).
std::vector<float> moved(const std::vector<float>& q, double cos, unsigned seed) {
  const std::size_t d = q.size();
  auto r = gaussian(d, seed);
  double dot = 0;
  for (std::size_t j = 0; j < d; ++j) dot += double(r[j]) * q[j];
  for (std::size_t j = 0; j < d; ++j) r[j] = float(r[j] - dot * q[j]);
  double rn = 0;
  for (float v : r) rn += double(v) * v;
  rn = std::sqrt(rn);
  std::vector<float> out(d);
  double sin = std::sqrt(1 - cos * cos);
  for (std::size_t j = 0; j < d; ++j) out[j] = float(cos * q[j] + sin * r[j] / rn);
  return out;
}

std::unique_ptr<FlatIndex> make_flat(const std::vector<float>& x, std::size_t d, Metric m) {
  std::unique_ptr<FlatIndex> index(FlatIndex::create(d, m).value());
  CHECK(index->add(x.data(), x.size() / d, nullptr).ok());
  return index;
}

std::vector<idx_t> exact_ids(const Index& index, const std::vector<float>& q, std::size_t k,
                             const IdFilter* filter = nullptr) {
  std::vector<float> s(k);
  std::vector<idx_t> ids(k);
  SearchParams p;
  p.filter = filter;
  CHECK(index.search(q.data(), 1, k, s.data(), ids.data(), p).ok());
  return ids;
}

// One refine of session s; the ids it returned (info, when given, says how).
std::vector<idx_t> refine_ids(Session& s, const std::vector<float>& q, std::size_t k, TurnInfo* info = nullptr) {
  std::vector<float> sc(k);
  std::vector<idx_t> ids(k);
  CHECK(s.refine(q.data(), k, sc.data(), ids.data(), info).ok());
  return ids;
}

}  // namespace

TEST(first_turn_equals_search_and_tiny_move_is_proven_from_pool) {
  const std::size_t n = 3000, d = 32, k = 10;
  auto x = clustered(n, d, 1);
  auto index = make_flat(x, d, Metric::cosine);
  std::vector<float> q(x.begin(), x.begin() + d);
  SessionOptions opt;
  opt.pool_size = 200;
  auto s = Session::start(*index, q.data(), k, opt).value();
  CHECK(s->ids() == exact_ids(*index, q, k));
  CHECK(s->info().path == TurnPath::search);
  CHECK(s->info().distances == n);
  CHECK(s->info().exact);
  auto q2 = moved(q, 0.9999, 7);
  std::vector<float> sc(k);
  std::vector<idx_t> ids(k);
  TurnInfo info;
  CHECK(s->refine(q2.data(), k, sc.data(), ids.data(), &info).ok());
  CHECK(info.path == TurnPath::pool);
  CHECK(info.exact);
  CHECK(info.margin >= 0);
  // The pool is re-scored best-first only until the bound rules the rest out.
  CHECK(info.distances >= k && info.distances < 200);
  CHECK(ids == exact_ids(*index, q2, k));
  CHECK_NEAR(info.moved, std::sqrt(2 - 2 * 0.9999), 1e-3);
}

TEST(large_move_falls_back_to_a_full_scan_with_exact_results) {
  const std::size_t n = 2000, d = 24, k = 5;
  auto x = clustered(n, d, 3);
  auto index = make_flat(x, d, Metric::cosine);
  std::vector<float> q(x.begin(), x.begin() + d);
  SessionOptions opt;
  opt.pool_size = 50;
  auto s = Session::start(*index, q.data(), k, opt).value();
  std::vector<float> far(x.begin() + 7 * d, x.begin() + 8 * d);  // another cluster
  std::vector<float> sc(k);
  std::vector<idx_t> ids(k);
  TurnInfo info;
  CHECK(s->refine(far.data(), k, sc.data(), ids.data(), &info).ok());
  CHECK(info.path == TurnPath::cold);
  CHECK(std::isnan(info.margin));  // too far for the pool: not even scored
  CHECK(info.distances == n);
  CHECK(info.exact);
  CHECK(ids == exact_ids(*index, far, k));
}

// Soundness of the bound: over many moves of every size and every metric, whenever the pool path
// is taken its answer is the exhaustive one, and every path's answer is exhaustive.
TEST(pool_path_is_never_wrong_for_any_metric) {
  const std::size_t n = 1500, d = 16, k = 8;
  for (Metric m : {Metric::cosine, Metric::inner_product, Metric::l2}) {
    auto x = clustered(n, d, 11);
    auto index = make_flat(x, d, m);
    int pool_hits = 0, calls = 0;
    for (unsigned t = 0; t < 40; ++t) {
      std::vector<float> q(x.begin() + t * d, x.begin() + (t + 1) * d);
      SessionOptions opt;
      opt.pool_size = 100;
      auto s = Session::start(*index, q.data(), k, opt).value();
      for (double cos : {0.99999, 0.9999, 0.999, 0.99, 0.96, 0.8}) {
        auto q2 = moved(q, cos, 100 + t);
        std::vector<float> sc(k);
        std::vector<idx_t> ids(k);
        TurnInfo info;
        CHECK(s->refine(q2.data(), k, sc.data(), ids.data(), &info).ok());
        CHECK(ids == exact_ids(*index, q2, k));
        CHECK(info.exact);
        pool_hits += info.path == TurnPath::pool;
        ++calls;
      }
    }
    CHECK(pool_hits > calls / 4);  // the shortcut fires for small moves
    CHECK(pool_hits < calls);      // and not for the large ones
  }
}

TEST(exclude_seen_never_returns_an_id_twice) {
  const std::size_t n = 1000, d = 16, k = 6;
  auto x = clustered(n, d, 5);
  auto index = make_flat(x, d, Metric::inner_product);
  std::vector<float> q(x.begin(), x.begin() + d);
  SessionOptions opt;
  opt.exclude_seen = true;
  opt.pool_size = 64;
  auto s = Session::start(*index, q.data(), k, opt).value();
  std::set<idx_t> seen(s->ids().begin(), s->ids().end());
  CHECK(seen.size() == k);
  for (unsigned turn = 0; turn < 6; ++turn) {
    auto q2 = moved(q, 0.999, 40 + turn);
    IdFilter deny;
    deny.mode = IdFilter::Mode::deny;
    deny.ids.insert(seen.begin(), seen.end());
    auto ids = refine_ids(*s, q2, k);
    CHECK(ids == exact_ids(*index, q2, k, &deny));
    for (idx_t id : ids) CHECK(seen.insert(id).second);
  }
  CHECK(s->seen().size() == seen.size());
}

TEST(allow_filter_with_exclude_seen_exhausts_then_reports_missing) {
  const std::size_t n = 500, d = 8, k = 3;
  auto x = clustered(n, d, 9);
  auto index = make_flat(x, d, Metric::l2);
  SessionOptions opt;
  opt.exclude_seen = true;
  opt.filter.mode = IdFilter::Mode::allow;
  opt.filter.ids = {1, 2, 3, 4, 400};
  std::vector<float> q(x.begin(), x.begin() + d);
  auto s = Session::start(*index, q.data(), k, opt).value();
  std::vector<float> sc(k);
  std::vector<idx_t> ids(k);
  CHECK(s->refine(q.data(), k, sc.data(), ids.data(), nullptr).ok());
  int missing = int(std::count(ids.begin(), ids.end(), kNoId));
  CHECK(missing == 1);
  auto seen = s->seen();
  std::set<idx_t> all(seen.begin(), seen.end());
  CHECK(all == std::set<idx_t>({1, 2, 3, 4, 400}));
  CHECK(std::isinf(sc[2]));
}

TEST(adding_vectors_makes_the_pool_stale) {
  const std::size_t n = 800, d = 16, k = 4;
  auto x = clustered(n, d, 13);
  auto index = make_flat(x, d, Metric::cosine);
  std::vector<float> q(x.begin(), x.begin() + d);
  SessionOptions opt;
  auto s = Session::start(*index, q.data(), k, opt).value();
  // A copy of the query itself: must now be the top hit even though the pool never saw it.
  idx_t new_id = 100000;
  CHECK(index->add(q.data(), 1, &new_id).ok());
  std::vector<float> sc(k);
  std::vector<idx_t> ids(k);
  TurnInfo info;
  CHECK(s->refine(q.data(), k, sc.data(), ids.data(), &info).ok());
  CHECK(info.path == TurnPath::cold);
  CHECK(ids[0] == new_id || ids[1] == new_id);  // ties with the original row 0
  CHECK(ids == exact_ids(*index, q, k));
}

TEST(refine_group_matches_exhaustive_search_per_query) {
  const std::size_t n = 2500, d = 32, k = 10, g = 8;
  auto x = clustered(n, d, 17);
  auto index = make_flat(x, d, Metric::cosine);
  std::vector<float> q(x.begin() + 5 * d, x.begin() + 6 * d);
  std::vector<float> batch;
  for (std::size_t i = 0; i < g; ++i) {
    auto qi = moved(q, i < 4 ? 0.9999 : 0.9, 300 + unsigned(i));
    batch.insert(batch.end(), qi.begin(), qi.end());
  }
  GroupOptions opt;
  opt.pool_size = 150;
  std::vector<float> sc(g * k);
  std::vector<idx_t> ids(g * k);
  std::vector<TurnInfo> infos(g);
  std::uint64_t shared = 0;
  CHECK(refine_group(*index, q.data(), batch.data(), g, k, opt, sc.data(), ids.data(), infos.data(), &shared).ok());
  CHECK(shared == n);
  int pool_paths = 0;
  for (std::size_t i = 0; i < g; ++i) {
    std::vector<float> qi(batch.begin() + i * d, batch.begin() + (i + 1) * d);
    std::vector<idx_t> got(ids.begin() + i * k, ids.begin() + (i + 1) * k);
    CHECK(got == exact_ids(*index, qi, k));
    CHECK(infos[i].exact);
    pool_paths += infos[i].path == TurnPath::pool;
    CHECK(infos[i].distances == (infos[i].path == TurnPath::pool ? 150 : 150 + n));
    // Scores agree with the index's own scoring.
    std::vector<float> ref(k);
    CHECK(index->score_ids(qi.data(), got.data(), k, ref.data()).ok());
    for (std::size_t j = 0; j < k; ++j) CHECK_NEAR(sc[i * k + j], ref[j], 1e-5);
  }
  CHECK(pool_paths >= 4);
}

TEST(bad_input_is_rejected) {
  const std::size_t d = 8;
  auto x = clustered(100, d, 19);
  auto index = make_flat(x, d, Metric::cosine);
  std::vector<float> q(x.begin(), x.begin() + d);
  CHECK(!Session::start(*index, q.data(), 0, {}).ok());
  std::vector<float> nan_q = q;
  nan_q[3] = std::nanf("");
  auto r = Session::start(*index, nan_q.data(), 3, {});
  CHECK(!r.ok() && r.error().message.find("NaN") != std::string::npos);
  std::vector<float> zero(d, 0.f);
  CHECK(!Session::start(*index, zero.data(), 3, {}).ok());
  auto s = Session::start(*index, q.data(), 3, {}).value();
  std::vector<float> sc(3);
  std::vector<idx_t> ids(3);
  CHECK(!s->refine(nan_q.data(), 3, sc.data(), ids.data(), nullptr).ok());
  CHECK(s->turns() == 1);  // a failed refine changes nothing
}

namespace {

// An index that runs `hook` (another thread's write, made deterministic) right before its next
// read of a chosen kind, then behaves like the index it wraps: it puts a removal exactly into the
// window between a session's staleness check and its scoring of the pool.
class InterleavingIndex final : public Index {
 public:
  enum class At { search, score, score_batch };
  explicit InterleavingIndex(FlatIndex& inner) : inner_(inner) {}
  void before(At at, std::function<void()> hook) {
    at_ = at;
    hook_ = std::move(hook);
  }

  std::size_t dim() const noexcept override { return inner_.dim(); }
  Metric metric() const noexcept override { return inner_.metric(); }
  std::size_t size() const noexcept override { return inner_.size(); }
  Status add(const float* v, std::size_t n, const idx_t* ids) override { return inner_.add(v, n, ids); }
  Status remove(const idx_t* ids, std::size_t n) override { return inner_.remove(ids, n); }
  Status search(const float* q, std::size_t nq, std::size_t k, float* s, idx_t* i, const SearchParams& p) const override {
    fire(At::search);
    return inner_.search(q, nq, k, s, i, p);
  }
  Status score_ids(const float* q, const idx_t* ids, std::size_t n, float* s) const override {
    fire(At::score);
    return inner_.score_ids(q, ids, n, s);
  }
  Status score_ids_prepared(const float* q, const idx_t* ids, std::size_t n, float* s) const override {
    fire(At::score);
    return inner_.score_ids_prepared(q, ids, n, s);
  }
  Status score_ids_batch(const float* q, std::size_t nq, const idx_t* ids, std::size_t n, float* s) const override {
    fire(At::score_batch);
    return inner_.score_ids_batch(q, nq, ids, n, s);
  }
  std::uint64_t generation() const noexcept override { return inner_.generation(); }
  bool exact_search() const noexcept override { return inner_.exact_search(); }
  std::optional<float> max_norm() const noexcept override { return inner_.max_norm(); }

 private:
  void fire(At at) const {
    if (!hook_ || at != at_) return;
    auto hook = std::move(hook_);
    hook_ = nullptr;
    hook();
  }
  FlatIndex& inner_;
  At at_ = At::search;
  mutable std::function<void()> hook_;
};

}  // namespace

TEST(a_removal_between_the_staleness_check_and_the_pool_scoring_is_not_an_error) {
  const std::size_t n = 600, d = 16, k = 5;
  auto x = clustered(n, d, 23);
  auto flat = make_flat(x, d, Metric::cosine);
  InterleavingIndex index(*flat);
  std::vector<float> q(x.begin() + 7 * d, x.begin() + 8 * d);
  SessionOptions opt;
  opt.pool_size = 40;
  auto s = Session::start(index, q.data(), k, opt).value();
  // The pool's best entry disappears after the session checked the pool is current.
  const idx_t gone = s->ids()[0];
  index.before(InterleavingIndex::At::score, [&] { CHECK(flat->remove(&gone, 1).ok()); });
  const auto q2 = moved(q, 0.9995, 29);
  std::vector<float> sc(k);
  std::vector<idx_t> ids(k);
  TurnInfo info;
  const Status st = s->refine(q2.data(), k, sc.data(), ids.data(), &info);
  CHECK(st.ok());
  CHECK(ids == exact_ids(*flat, q2, k));  // the answer for the index after the removal
  CHECK(std::find(ids.begin(), ids.end(), gone) == ids.end());
  CHECK(info.path != TurnPath::pool);  // the pool it was about to trust is stale
}

TEST(refine_group_survives_a_removal_between_its_pool_search_and_the_scoring) {
  const std::size_t n = 700, d = 16, k = 5, g = 4;
  auto x = clustered(n, d, 31);
  auto flat = make_flat(x, d, Metric::cosine);
  InterleavingIndex index(*flat);
  std::vector<float> q(x.begin() + 3 * d, x.begin() + 4 * d);
  std::vector<float> batch;
  for (std::size_t i = 0; i < g; ++i) {
    auto qi = moved(q, 0.9995, 40 + unsigned(i));
    batch.insert(batch.end(), qi.begin(), qi.end());
  }
  const std::vector<idx_t> before = exact_ids(*flat, q, 3);
  index.before(InterleavingIndex::At::score_batch, [&] { CHECK(flat->remove(before.data(), before.size()).ok()); });
  GroupOptions opt;
  opt.pool_size = 50;
  std::vector<float> sc(g * k);
  std::vector<idx_t> ids(g * k);
  const Status st = refine_group(index, q.data(), batch.data(), g, k, opt, sc.data(), ids.data(), nullptr, nullptr);
  CHECK(st.ok());
  for (std::size_t i = 0; i < g; ++i) {
    std::vector<float> qi(batch.begin() + i * d, batch.begin() + (i + 1) * d);
    CHECK(std::vector<idx_t>(ids.begin() + i * k, ids.begin() + (i + 1) * k) == exact_ids(*flat, qi, k));
  }
}

TEST(a_pool_search_for_every_vector_survives_a_removal_just_before_it) {
  const std::size_t n = 30, d = 8, k = 4;
  auto x = clustered(n, d, 37);
  auto flat = make_flat(x, d, Metric::cosine);
  InterleavingIndex index(*flat);
  std::vector<float> q(x.begin(), x.begin() + d);
  // The session asks for a pool of every vector; five of them go before its search runs.
  const std::vector<idx_t> gone = {10, 11, 12, 13, 14};
  index.before(InterleavingIndex::At::search, [&] { CHECK(flat->remove(gone.data(), gone.size()).ok()); });
  SessionOptions opt;
  opt.pool_size = n;
  auto s = Session::start(index, q.data(), k, opt);
  CHECK(s.ok());
  if (s.ok()) CHECK(s.value()->ids() == exact_ids(*flat, q, k));
  // The same for a group's pool.
  index.before(InterleavingIndex::At::search, [&] {
    const idx_t more[2] = {20, 21};
    CHECK(flat->remove(more, 2).ok());
  });
  GroupOptions gopt;
  gopt.pool_size = n;
  std::vector<float> sc(k);
  std::vector<idx_t> ids(k);
  CHECK(refine_group(index, q.data(), q.data(), 1, k, gopt, sc.data(), ids.data(), nullptr, nullptr).ok());
  CHECK(ids == exact_ids(*flat, q, k));
}

TEST(k_beyond_the_index_and_negative_threads_are_errors) {
  const std::size_t d = 8;
  auto x = clustered(12, d, 41);
  auto index = make_flat(x, d, Metric::cosine);
  std::vector<float> q(x.begin(), x.begin() + d);
  // Like search: k larger than the index is an error, not a padded answer.
  auto too_many = Session::start(*index, q.data(), 13, {});
  CHECK(!too_many.ok() && too_many.error().message.find("exceeds") != std::string::npos);
  auto s = Session::start(*index, q.data(), 12, {}).value();
  std::vector<float> sc(13);
  std::vector<idx_t> ids(13);
  const Status r = s->refine(q.data(), 13, sc.data(), ids.data(), nullptr);
  CHECK(!r.ok() && r.error().message.find("exceeds") != std::string::npos);
  CHECK(s->turns() == 1);
  GroupOptions gopt;
  CHECK(!refine_group(*index, q.data(), q.data(), 1, 13, gopt, sc.data(), ids.data(), nullptr, nullptr).ok());
  SessionOptions bad;
  bad.num_threads = -7;
  auto neg = Session::start(*index, q.data(), 3, bad);
  CHECK(!neg.ok() && neg.error().message.find("num_threads") != std::string::npos);
  gopt.num_threads = -7;
  CHECK(!refine_group(*index, q.data(), q.data(), 1, 3, gopt, sc.data(), ids.data(), nullptr, nullptr).ok());
}

VSR_TEST_MAIN

TEST(exclude_drops_only_the_given_ids_and_the_pool_proof_still_holds) {
  const std::size_t n = 1200, d = 16, k = 5;
  auto x = clustered(n, d, 17);
  for (Metric m : {Metric::inner_product, Metric::cosine, Metric::l2}) {
    auto index = make_flat(x, d, m);
    std::vector<float> q(x.begin() + 3 * d, x.begin() + 4 * d);
    SessionOptions opt;
    opt.pool_size = 128;
    auto s = Session::start(*index, q.data(), k, opt).value();
    // Like an agent that shows only the top-1 of each turn: exclude it, keep the rest eligible.
    IdFilter deny;
    deny.mode = IdFilter::Mode::deny;
    std::size_t pool_turns = 0;
    for (unsigned turn = 0; turn < 8; ++turn) {
      const std::vector<idx_t> previous = s->ids();
      const idx_t top1 = previous[0];
      CHECK(s->exclude(&top1, 1).ok());
      deny.ids.insert(top1);
      auto q2 = moved(q, 0.9995, 70 + turn);
      TurnInfo info;
      auto ids = refine_ids(*s, q2, k, &info);
      CHECK(ids == exact_ids(*index, q2, k, &deny));
      CHECK(std::find(ids.begin(), ids.end(), top1) == ids.end());
      pool_turns += info.path == TurnPath::pool;
      // The previous turn's other results were not excluded: after a tiny move they come back.
      CHECK(std::find(ids.begin(), ids.end(), previous[1]) != ids.end());
    }
    CHECK(pool_turns > 0);  // the pool path ran with excluded entries in the pool
    // Excluded ids are in seen even when exclude_seen is off.
    auto seen = s->seen();
    for (idx_t id : deny.ids) CHECK(std::find(seen.begin(), seen.end(), id) != seen.end());
  }
}

TEST(exclude_with_allow_filter_and_bad_ids) {
  const std::size_t n = 300, d = 8, k = 2;
  auto x = clustered(n, d, 23);
  auto index = make_flat(x, d, Metric::inner_product);
  SessionOptions opt;
  opt.filter.mode = IdFilter::Mode::allow;
  opt.filter.ids = {10, 20, 30};
  std::vector<float> q(x.begin(), x.begin() + d);
  auto s = Session::start(*index, q.data(), k, opt).value();
  std::vector<idx_t> ex = {20, 30, 99999};  // an id not in the index is fine
  CHECK(s->exclude(ex.data(), ex.size()).ok());
  auto ids = refine_ids(*s, q, k);
  CHECK(ids[0] == 10 && ids[1] == kNoId);
  std::vector<idx_t> bad = {5, -3};
  Status st = s->exclude(bad.data(), bad.size());
  CHECK(!st.ok() && st.error().code == ErrorCode::invalid_argument);
  auto seen = s->seen();
  CHECK(std::find(seen.begin(), seen.end(), 5) == seen.end());  // a failed call excludes nothing
  CHECK(std::find(seen.begin(), seen.end(), 99999) != seen.end());
}

// GraphIndex: recall against the exact index for every metric and storage, incremental add,
// removal with repair, filtered search, persistence, and sessions with warm starts.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "test_harness.hpp"
#include "vsr/flat_index.hpp"
#include "vsr/graph_index.hpp"
#include "vsr/session.hpp"

using namespace vsr;

namespace {

// n unit vectors around 50 centres; `center_seed` fixes the centres, so queries drawn with the
// same centre seed come from the same distribution as the data.
std::vector<float> clustered(std::size_t n, std::size_t d, unsigned seed, unsigned center_seed = 0) {
  std::mt19937 crng(center_seed), rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> centers(50 * d), x(n * d);
  for (auto& c : centers) c = g(crng);
  for (std::size_t i = 0; i < n; ++i) {
    std::size_t c = rng() % 50;
    double s = 0;
    for (std::size_t j = 0; j < d; ++j) {
      x[i * d + j] = centers[c * d + j] + 0.7f * g(rng);
      s += double(x[i * d + j]) * x[i * d + j];
    }
    for (std::size_t j = 0; j < d; ++j) x[i * d + j] = float(x[i * d + j] / std::sqrt(s));
  }
  return x;
}

std::unique_ptr<GraphIndex> make_graph(std::size_t d, Metric m, Storage s = Storage::f32, std::size_t M = 12) {
  GraphOptions o;
  o.metric = m;
  o.storage = s;
  o.M = M;
  o.ef_construction = 100;
  o.ef_search = 64;
  auto g = GraphIndex::make(d, o).value();
  g->set_num_threads(2);
  return g;
}

// Mean recall@k of `index` against `truth` over the queries.
double recall(const Index& index, const Index& truth, const std::vector<float>& queries, std::size_t k,
              const IdFilter* filter = nullptr) {
  const std::size_t d = index.dim(), nq = queries.size() / d;
  std::vector<float> s(nq * k), ts(nq * k);
  std::vector<idx_t> ids(nq * k), tids(nq * k);
  SearchParams p;
  p.filter = filter;
  CHECK(index.search(queries.data(), nq, k, s.data(), ids.data(), p).ok());
  CHECK(truth.search(queries.data(), nq, k, ts.data(), tids.data(), p).ok());
  std::size_t hit = 0, total = 0;
  for (std::size_t i = 0; i < nq; ++i) {
    std::set<idx_t> t;
    for (std::size_t j = 0; j < k; ++j)
      if (tids[i * k + j] != kNoId) t.insert(tids[i * k + j]);
    for (std::size_t j = 0; j < k; ++j) hit += t.count(ids[i * k + j]);
    total += t.size();
  }
  return total ? double(hit) / double(total) : 1.0;
}

std::unique_ptr<FlatIndex> make_flat(const std::vector<float>& x, std::size_t d, Metric m) {
  std::unique_ptr<FlatIndex> f(FlatIndex::create(d, m).value());
  CHECK(f->add(x.data(), x.size() / d, nullptr).ok());
  return f;
}

}  // namespace

TEST(recall_is_high_for_every_metric_and_storage) {
  const std::size_t n = 4000, d = 32, k = 10;
  auto x = clustered(n, d, 1);
  auto q = clustered(100, d, 2);
  for (Metric m : {Metric::cosine, Metric::inner_product, Metric::l2})
    for (Storage s : {Storage::f32, Storage::bf16, Storage::int8}) {
      auto g = make_graph(d, m, s);
      CHECK(g->add(x.data(), n, nullptr).ok());
      CHECK(g->size() == n);
      auto f = make_flat(x, d, m);
      double r = recall(*g, *f, q, k);
      if (r < 0.95) std::fprintf(stderr, "metric %d storage %d recall %.3f\n", int(m), int(s), r);
      CHECK(r >= 0.95);
    }
}

TEST(scores_are_exact_after_rerank) {
  const std::size_t n = 2000, d = 24, k = 5;
  auto x = clustered(n, d, 3);
  auto g = make_graph(d, Metric::cosine, Storage::int8);
  CHECK(g->add(x.data(), n, nullptr).ok());
  std::vector<float> q(x.begin(), x.begin() + d), s(k), ref(k);
  std::vector<idx_t> ids(k);
  CHECK(g->search(q.data(), 1, k, s.data(), ids.data(), {}).ok());
  CHECK(ids[0] == 0);
  CHECK_NEAR(s[0], 1.0, 1e-5);
  auto f = make_flat(x, d, Metric::cosine);
  CHECK(f->score_ids(q.data(), ids.data(), k, ref.data()).ok());
  for (std::size_t j = 0; j < k; ++j) CHECK_NEAR(s[j], ref[j], 1e-5);
}

// score_ids_prepared (a session's pool re-scoring) gives score_ids' exact scores for a query that
// is already normalised, on the graph (every storage) and the flat index, and names unknown ids.
TEST(score_ids_prepared_matches_score_ids) {
  const std::size_t n = 600, d = 40;
  auto x = clustered(n, d, 11);
  std::vector<float> q = clustered(1, d, 12);
  for (float& v : q) v *= 3.0f;  // not unit length: score_ids normalises it for cosine
  std::vector<float> unit(q);
  double norm = 0;
  for (float v : q) norm += double(v) * v;
  for (float& v : unit) v = float(v / std::sqrt(norm));
  const std::vector<idx_t> ids = {5, 599, 0, 17, 17, 300, 42, 8, 123};
  for (Metric m : {Metric::cosine, Metric::inner_product, Metric::l2}) {
    auto f = make_flat(x, d, m);
    const std::vector<float>& prepared = m == Metric::cosine ? unit : q;
    std::vector<float> ref(ids.size()), got(ids.size());
    CHECK(f->score_ids(q.data(), ids.data(), ids.size(), ref.data()).ok());
    CHECK(f->score_ids_prepared(prepared.data(), ids.data(), ids.size(), got.data()).ok());
    for (std::size_t j = 0; j < ids.size(); ++j) CHECK_NEAR(got[j], ref[j], 1e-5);
    for (Storage s : {Storage::f32, Storage::f16, Storage::bf16, Storage::int8}) {
      auto g = make_graph(d, m, s);
      CHECK(g->add(x.data(), n, nullptr).ok());
      std::vector<float> a(ids.size()), b(ids.size());
      CHECK(g->score_ids(q.data(), ids.data(), ids.size(), a.data()).ok());
      CHECK(g->score_ids_prepared(prepared.data(), ids.data(), ids.size(), b.data()).ok());
      for (std::size_t j = 0; j < ids.size(); ++j) {
        // The same query gives the same scores; a query normalised here may differ in its last bit.
        if (m == Metric::cosine) {
          CHECK_NEAR(a[j], b[j], 1e-6);
        } else {
          CHECK(a[j] == b[j]);
        }
        CHECK_NEAR(a[j], ref[j], 1e-4);  // exact: f32 rows or float32 originals
      }
      const idx_t unknown[] = {3, 100000};
      Status st = g->score_ids_prepared(prepared.data(), unknown, 2, b.data());
      CHECK(!st.ok() && st.error().code == ErrorCode::not_found &&
            st.error().message.find("100000") != std::string::npos);
    }
  }
}

TEST(incremental_adds_keep_recall_and_ids) {
  const std::size_t n = 4000, d = 32, k = 10;
  auto x = clustered(n, d, 5);
  auto q = clustered(100, d, 6);
  auto g = make_graph(d, Metric::l2);
  std::vector<idx_t> ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = idx_t(1000 + 3 * i);
  for (std::size_t b = 0; b < n; b += 500) CHECK(g->add(x.data() + b * d, 500, ids.data() + b).ok());
  CHECK(!g->add(x.data(), 1, ids.data()).ok());  // duplicate id
  CHECK(g->size() == n);
  std::unique_ptr<FlatIndex> f(FlatIndex::create(d, Metric::l2).value());
  CHECK(f->add(x.data(), n, ids.data()).ok());
  CHECK(recall(*g, *f, q, k) >= 0.95);
}

TEST(removal_repairs_links_and_keeps_recall) {
  const std::size_t n = 5000, d = 32, k = 10;
  auto x = clustered(n, d, 7);
  auto q = clustered(100, d, 8);
  auto g = make_graph(d, Metric::cosine);
  CHECK(g->add(x.data(), n, nullptr).ok());
  const std::size_t links_before = g->link_count();
  // Remove 40% (every node whose id % 5 < 2), including the entry point's neighbourhood.
  std::vector<idx_t> gone;
  for (std::size_t i = 0; i < n; ++i)
    if (i % 5 < 2) gone.push_back(idx_t(i));
  CHECK(g->remove(gone.data(), gone.size()).ok());
  CHECK(g->size() == n - gone.size());
  CHECK(g->link_count() > links_before / 2);  // repaired, not just dropped
  std::vector<float> kept;
  std::vector<idx_t> kept_ids;
  for (std::size_t i = 0; i < n; ++i)
    if (i % 5 >= 2) {
      kept.insert(kept.end(), x.begin() + i * d, x.begin() + (i + 1) * d);
      kept_ids.push_back(idx_t(i));
    }
  std::unique_ptr<FlatIndex> f(FlatIndex::create(d, Metric::cosine).value());
  CHECK(f->add(kept.data(), kept_ids.size(), kept_ids.data()).ok());
  double r = recall(*g, *f, q, k);
  if (r < 0.95) std::fprintf(stderr, "recall after removal %.3f\n", r);
  CHECK(r >= 0.95);
  // Removed ids are gone for good; freed slots are reused by new vectors.
  std::vector<float> s(1);
  CHECK(!g->score_ids(q.data(), gone.data(), 1, s.data()).ok());
  CHECK(!g->remove(gone.data(), 1).ok());
  std::vector<float> back;
  for (idx_t id : gone) back.insert(back.end(), x.begin() + id * d, x.begin() + (id + 1) * d);
  CHECK(g->add(back.data(), gone.size(), gone.data()).ok());
  CHECK(g->size() == n);
  auto full = make_flat(x, d, Metric::cosine);
  CHECK(recall(*g, *full, q, k) >= 0.95);
}

// Removing most nodes leaves most upper-layer blocks as garbage; the next add compacts them. The
// graph must come out whole: every upper link valid (a save/load round trip checks them all),
// recall held, and a walk through the compacted upper layers finding its nodes.
TEST(removing_most_nodes_then_adding_compacts_the_upper_layers) {
  const std::size_t n = 4000, d = 24, k = 10;
  auto x = clustered(n, d, 21);
  auto q = clustered(80, d, 22);
  auto g = make_graph(d, Metric::cosine, Storage::f32, 4);  // small M: many upper-layer nodes
  CHECK(g->add(x.data(), n, nullptr).ok());
  std::vector<idx_t> gone;
  for (std::size_t i = 0; i < n; ++i)
    if (i % 10 < 7) gone.push_back(idx_t(i));
  CHECK(g->remove(gone.data(), gone.size()).ok());
  std::vector<float> back;
  for (std::size_t j = 0; j < gone.size() / 2; ++j)
    back.insert(back.end(), x.begin() + gone[j] * d, x.begin() + (gone[j] + 1) * d);
  CHECK(g->add(back.data(), gone.size() / 2, gone.data()).ok());
  std::vector<float> live;
  std::vector<idx_t> live_ids;
  for (std::size_t i = 0; i < n; ++i)
    if (i % 10 >= 7 || std::find(gone.begin(), gone.begin() + std::ptrdiff_t(gone.size() / 2), idx_t(i)) !=
                           gone.begin() + std::ptrdiff_t(gone.size() / 2)) {
      live.insert(live.end(), x.begin() + i * d, x.begin() + (i + 1) * d);
      live_ids.push_back(idx_t(i));
    }
  CHECK(g->size() == live_ids.size());
  std::unique_ptr<FlatIndex> f(FlatIndex::create(d, Metric::cosine).value());
  CHECK(f->add(live.data(), live_ids.size(), live_ids.data()).ok());
  const double r = recall(*g, *f, q, k);
  if (r < 0.95) std::fprintf(stderr, "recall after compaction %.3f\n", r);
  CHECK(r >= 0.95);
  char tmpl[] = "/tmp/vsr_graph_compactXXXXXX";
  const int fd = mkstemp(tmpl);
  CHECK(fd >= 0);
  close(fd);
  CHECK(g->save(tmpl).ok());
  auto loaded = GraphIndex::load(tmpl, false, true);
  CHECK(loaded.ok());
  if (loaded.ok()) {
    CHECK(loaded.value()->link_count() == g->link_count());
    CHECK(recall(*loaded.value(), *f, q, k) == r);
  }
  std::remove(tmpl);
}

TEST(restrictive_filters_keep_recall) {
  const std::size_t n = 5000, d = 32, k = 10;
  auto x = clustered(n, d, 9);
  auto q = clustered(50, d, 10);
  auto g = make_graph(d, Metric::inner_product);
  CHECK(g->add(x.data(), n, nullptr).ok());
  auto f = make_flat(x, d, Metric::inner_product);
  for (std::size_t every : {2, 10, 50, 1000}) {
    IdFilter allow;
    allow.mode = IdFilter::Mode::allow;
    for (std::size_t i = 0; i < n; i += every) allow.ids.insert(idx_t(i));
    double r = recall(*g, *f, q, k, &allow);
    if (r < 0.95) std::fprintf(stderr, "allow 1/%zu recall %.3f\n", every, r);
    CHECK(r >= 0.95);
  }
  IdFilter deny;
  deny.mode = IdFilter::Mode::deny;
  for (std::size_t i = 0; i < n; i += 3) deny.ids.insert(idx_t(i));
  CHECK(recall(*g, *f, q, k, &deny) >= 0.95);
}

TEST(save_and_load_round_trip_with_and_without_mmap) {
  const std::size_t n = 3000, d = 16, k = 10;
  auto x = clustered(n, d, 11);
  auto q = clustered(50, d, 12);
  auto g = make_graph(d, Metric::cosine, Storage::bf16);
  CHECK(g->add(x.data(), n, nullptr).ok());
  std::vector<idx_t> gone = {1, 5, 9};
  CHECK(g->remove(gone.data(), gone.size()).ok());
  const std::string path = "/tmp/vsr_test_graph_" + std::to_string(::getpid()) + ".vsr";
  CHECK(g->save(path).ok());
  for (bool mmap : {true, false}) {
    auto loaded = GraphIndex::load(path, mmap, true);
    CHECK(loaded.ok());
    if (!loaded.ok()) continue;
    auto& h = *loaded.value();
    CHECK(h.size() == g->size());
    CHECK(h.is_mapped() == mmap);
    std::vector<float> s1(50 * k), s2(50 * k);
    std::vector<idx_t> i1(50 * k), i2(50 * k);
    CHECK(g->search(q.data(), 50, k, s1.data(), i1.data(), {}).ok());
    CHECK(h.search(q.data(), 50, k, s2.data(), i2.data(), {}).ok());
    CHECK(i1 == i2);
    // A loaded (mapped) index accepts adds and removes.
    std::vector<idx_t> more = {1, 5};
    CHECK(h.add(x.data() + d, 1, more.data()).ok());
    CHECK(h.remove(more.data(), 1).ok());
  }
  // Flipping a byte in the middle is caught by the checksum.
  {
    FILE* fp = std::fopen(path.c_str(), "r+b");
    std::fseek(fp, 4096, SEEK_SET);
    int c = std::fgetc(fp);
    std::fseek(fp, 4096, SEEK_SET);
    std::fputc(c ^ 0x5A, fp);
    std::fclose(fp);
    CHECK(!GraphIndex::load(path, true, true).ok());
  }
  std::remove(path.c_str());
}

TEST(sessions_on_the_graph_use_warm_starts) {
  const std::size_t n = 6000, d = 32, k = 10;
  auto x = clustered(n, d, 13);
  auto g = make_graph(d, Metric::cosine);
  CHECK(g->add(x.data(), n, nullptr).ok());
  auto f = make_flat(x, d, Metric::cosine);
  std::mt19937 rng(14);
  std::normal_distribution<float> gauss;
  int warm = 0, pool = 0, cold = 0;
  double hit = 0;
  for (std::size_t t = 0; t < 30; ++t) {
    std::vector<float> q(x.begin() + t * 97 * d, x.begin() + (t * 97 + 1) * d);
    SessionOptions opt;
    opt.pool_size = 64;
    auto s = Session::start(*g, q.data(), k, opt).value();
    CHECK(!s->info().exact);
    for (float noise : {0.02f, 0.15f, 0.3f, 2.0f}) {
      std::vector<float> q2(q);
      for (auto& v : q2) v += noise * gauss(rng) / std::sqrt(float(d));
      std::vector<float> sc(k), fs(k);
      std::vector<idx_t> ids(k), fids(k);
      TurnInfo info;
      CHECK(s->refine(q2.data(), k, sc.data(), ids.data(), &info).ok());
      warm += info.path == TurnPath::warm;
      pool += info.path == TurnPath::pool;
      cold += info.path == TurnPath::cold;
      CHECK(f->search(q2.data(), 1, k, fs.data(), fids.data(), {}).ok());
      std::set<idx_t> truth(fids.begin(), fids.end());
      for (idx_t id : ids) hit += truth.count(id);
    }
  }
  CHECK(warm > 0 && pool > 0 && cold > 0);
  CHECK(hit / (30.0 * 4 * k) >= 0.95);
}

// Range search: every returned vector lies inside the radius with its exact score, best first,
// and the ball is found almost whole (against the exact index's range search), for radii whose
// balls hold from a few to several hundred vectors (k doubles past ef).
// warm_ef_search narrows the beam of warm-started searches only: from good seeds the narrower
// walk computes fewer distances and still finds the answer; cold searches are unchanged.
TEST(warm_ef_search_narrows_warm_starts_only) {
  const std::size_t n = 3000, d = 32, k = 10, nq = 40;
  auto x = clustered(n, d, 31);
  auto q = clustered(nq, d, 32);
  auto g = make_graph(d, Metric::cosine);
  CHECK(g->add(x.data(), n, nullptr).ok());
  auto f = make_flat(x, d, Metric::cosine);
  std::vector<float> fs(nq * k);
  std::vector<idx_t> truth(nq * k);
  CHECK(f->search(q.data(), nq, k, fs.data(), truth.data(), {}).ok());
  auto run_warm = [&](std::size_t& hits) {
    SearchStats stats;
    SearchParams p;
    p.stats = &stats;
    hits = 0;
    for (std::size_t i = 0; i < nq; ++i) {
      std::vector<float> s(k);
      std::vector<idx_t> ids(k);
      // Seeds: the true answer's neighbourhood, shuffled (as a refined query's cached pool would be).
      std::vector<idx_t> seeds(truth.begin() + i * k, truth.begin() + (i + 1) * k);
      std::reverse(seeds.begin(), seeds.end());
      CHECK(g->search_warm(q.data() + i * d, k, seeds.data(), seeds.size(), s.data(), ids.data(), p).ok());
      std::set<idx_t> t(truth.begin() + i * k, truth.begin() + (i + 1) * k);
      for (idx_t id : ids) hits += t.count(id);
    }
    return stats.distances.load();
  };
  auto cold_distances = [&] {
    SearchStats stats;
    SearchParams p;
    p.stats = &stats;
    std::vector<float> s(nq * k);
    std::vector<idx_t> ids(nq * k);
    CHECK(g->search(q.data(), nq, k, s.data(), ids.data(), p).ok());
    return stats.distances.load();
  };
  CHECK(g->warm_ef_search() == 0);
  std::size_t wide_hits = 0, narrow_hits = 0;
  const std::uint64_t wide = run_warm(wide_hits), cold_wide = cold_distances();
  CHECK(g->set_warm_ef_search(k).ok());
  const std::uint64_t narrow = run_warm(narrow_hits), cold_narrow = cold_distances();
  CHECK(narrow < wide);
  CHECK(cold_narrow == cold_wide);
  CHECK(double(narrow_hits) >= 0.95 * double(nq * k));
  CHECK(wide_hits >= narrow_hits);
  CHECK(g->set_warm_ef_search(0).ok());
  std::size_t again = 0;
  CHECK(run_warm(again) == wide && again == wide_hits);
}

TEST(range_search_finds_the_ball_with_exact_scores) {
  const std::size_t n = 4000, d = 24, nq = 30;
  auto x = clustered(n, d, 21);
  auto queries = clustered(nq, d, 22);
  for (Metric m : {Metric::cosine, Metric::l2}) {
    auto g = make_graph(d, m, Storage::int8);
    CHECK(g->add(x.data(), n, nullptr).ok());
    auto flat = make_flat(x, d, m);
    for (float radius : m == Metric::l2 ? std::vector<float>{0.5f, 0.8f} : std::vector<float>{0.75f, 0.6f}) {
      RangeResult got, want;
      CHECK(g->range_search(queries.data(), nq, radius, &got, SearchParams()).ok());
      CHECK(flat->range_search(queries.data(), nq, radius, &want, SearchParams()).ok());
      std::size_t hit = 0;
      for (std::size_t i = 0; i < nq; ++i) {
        std::set<idx_t> truth(want.ids.begin() + want.lims[i], want.ids.begin() + want.lims[i + 1]);
        for (std::size_t j = got.lims[i]; j < got.lims[i + 1]; ++j) {
          hit += truth.count(got.ids[j]);
          CHECK(m == Metric::l2 ? got.scores[j] <= radius : got.scores[j] >= radius);
          float exact;
          CHECK(flat->score_ids(queries.data() + i * d, &got.ids[j], 1, &exact).ok());
          CHECK_NEAR(got.scores[j], exact, 1e-4);
          if (j > got.lims[i]) CHECK(m == Metric::l2 ? got.scores[j] >= got.scores[j - 1] : got.scores[j] <= got.scores[j - 1]);
        }
      }
      const double recall = want.ids.empty() ? 1.0 : double(hit) / double(want.ids.size());
      std::printf("range recall (metric %d, radius %.2f, %zu in balls): %.3f\n", int(m), radius, want.ids.size(), recall);
      CHECK(want.ids.size() > nq);
      CHECK(recall >= 0.95);
    }
  }
  RangeResult r;
  auto g = make_graph(d, Metric::cosine);
  CHECK(!g->range_search(queries.data(), 1, std::nanf(""), &r, SearchParams()).ok());
  CHECK(!g->range_search(queries.data(), 1, 0.5f, nullptr, SearchParams()).ok());
}

TEST(bad_arguments_are_rejected) {
  GraphOptions o;
  o.M = 1;
  CHECK(!GraphIndex::make(8, o).ok());
  o.M = 16;
  CHECK(!GraphIndex::make(0, o).ok());
  o.ef_search = 0;
  CHECK(!GraphIndex::make(8, o).ok());
  auto g = make_graph(4, Metric::cosine);
  std::vector<float> bad = {1, 2, std::nanf(""), 4};
  CHECK(!g->add(bad.data(), 1, nullptr).ok());
  std::vector<float> zero(4, 0.f);
  CHECK(!g->add(zero.data(), 1, nullptr).ok());
  CHECK(g->size() == 0);
  std::vector<float> ok = {1, 2, 3, 4}, s(2);
  CHECK(g->add(ok.data(), 1, nullptr).ok());
  std::vector<idx_t> ids(2);
  CHECK(!g->search(ok.data(), 1, 2, s.data(), ids.data(), {}).ok());  // k > size
  CHECK(!g->set_ef_search(0).ok());
  // Beams beyond 2^20 are rejected: their buffers alone could exhaust memory.
  CHECK(!g->set_ef_search(std::size_t(1) << 32).ok() && !g->set_warm_ef_search(std::size_t(1) << 32).ok());
  GraphOptions huge;
  huge.ef_construction = std::size_t(1) << 32;
  CHECK(!GraphIndex::make(4, huge).ok());
  idx_t missing = 77;
  CHECK(!g->remove(&missing, 1).ok());
  // Seeds are hints: one no longer in the index (another thread removed it) is skipped, and a
  // walk left without seeds starts from the entry point.
  CHECK(g->search_warm(ok.data(), 1, &missing, 1, s.data(), ids.data(), {}).ok() && ids[0] == 0);
  CHECK(!g->search_warm(ok.data(), 2, &missing, 1, s.data(), ids.data(), {}).ok());  // k > size
}

TEST(automatic_ids_are_consecutive_and_bounded_and_huge_vectors_are_rejected) {
  auto index = make_graph(8, Metric::inner_product, Storage::int8, 4);
  auto x = clustered(8, 8, 51);
  CHECK(index->add(x.data(), 4, nullptr).ok());
  CHECK(index->add(x.data() + 4 * 8, 4, nullptr).ok());
  std::vector<float> s(8);
  std::vector<idx_t> ids(8);
  CHECK(index->search(x.data(), 1, 8, s.data(), ids.data(), {}).ok());
  std::sort(ids.begin(), ids.end());
  CHECK(ids == std::vector<idx_t>({0, 1, 2, 3, 4, 5, 6, 7}));
  const idx_t top = std::numeric_limits<idx_t>::max();
  CHECK(!index->add(x.data(), 1, &top).ok() && index->size() == 8);
  const idx_t last = top - 1;
  CHECK(index->add(x.data(), 1, &last).ok());
  CHECK(!index->add(x.data(), 1, nullptr).ok() && index->size() == 9);
  std::vector<float> huge(8, 1e20f);
  auto st = index->add(huge.data(), 1, nullptr);
  CHECK(!st.ok() && st.error().message.find("norm") != std::string::npos && index->size() == 9);
  CHECK(!index->search(huge.data(), 1, 1, s.data(), ids.data(), {}).ok());
  const std::string path = "/tmp/vsr_test_graph_ids_" + std::to_string(::getpid()) + ".vsr";
  CHECK(index->save(path).ok());
  auto loaded = GraphIndex::load(path, true, true);
  CHECK(loaded.ok() && loaded.value()->size() == 9);
  // The mapped copy refuses to read a file truncated under it.
  CHECK(::truncate(path.c_str(), 64) == 0);
  CHECK(!loaded.value()->search(x.data(), 1, 1, s.data(), ids.data(), {}).ok());
  std::remove(path.c_str());
}

VSR_TEST_MAIN

TEST(reconstruct_returns_exact_rows_after_remove_reuse_and_mmap_load) {
  const std::size_t n = 600, d = 12;
  auto x = clustered(n, d, 21);
  for (std::size_t i = 0; i < n * d; ++i) x[i] *= 1.0f + float(i % 7);  // not unit rows (ip, l2)
  const std::string path = "/tmp/vsr_test_graph_rec_" + std::to_string(::getpid()) + ".vsr";
  for (Metric m : {Metric::inner_product, Metric::l2})
    for (Storage s : {Storage::f32, Storage::f16, Storage::int8}) {
      auto g = make_graph(d, m, s);
      CHECK(g->add(x.data(), n - 1, nullptr).ok());
      std::vector<idx_t> gone = {3, 4, 100};
      CHECK(g->remove(gone.data(), gone.size()).ok());
      idx_t reused = 9000;  // takes a freed slot
      CHECK(g->add(x.data() + (n - 1) * d, 1, &reused).ok());
      const std::vector<idx_t> want = {9000, 0, 598, 5, 0};
      const std::vector<std::size_t> row = {n - 1, 0, 598, 5, 0};
      auto check_rows = [&](const GraphIndex& idx) {
        std::vector<float> out(want.size() * d);
        CHECK(idx.reconstruct(want.data(), want.size(), out.data()).ok());
        for (std::size_t j = 0; j < want.size(); ++j)
          CHECK(std::equal(out.begin() + j * d, out.begin() + (j + 1) * d, x.begin() + row[j] * d));
      };
      check_rows(*g);
      std::vector<float> out(2 * d);
      Status st = g->reconstruct(gone.data() + 1, 2, out.data());
      CHECK(!st.ok() && st.error().code == ErrorCode::not_found && st.error().message == "2 ids are not in the index: 4, 100");
      CHECK(g->save(path).ok());
      auto loaded = GraphIndex::load(path, true, true);
      CHECK(loaded.ok());
      if (!loaded.ok()) continue;
      check_rows(*loaded.value());
      CHECK(loaded.value()->is_mapped());
    }
  // Cosine stores normalised rows and returns them.
  auto g = make_graph(d, Metric::cosine, Storage::bf16);
  std::vector<float> y(x.begin(), x.begin() + 10 * d);
  CHECK(g->add(y.data(), 10, nullptr).ok());
  idx_t id = 4;
  std::vector<float> out(d);
  CHECK(g->reconstruct(&id, 1, out.data()).ok());
  double nn = 0;
  for (std::size_t c = 0; c < d; ++c) nn += double(y[4 * d + c]) * y[4 * d + c];
  for (std::size_t c = 0; c < d; ++c) CHECK_NEAR(out[c], y[4 * d + c] / std::sqrt(nn), 1e-6);
  std::remove(path.c_str());
}

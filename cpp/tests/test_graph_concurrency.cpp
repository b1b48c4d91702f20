// A GraphIndex answers correctly while other threads add and remove vectors (parallel inserts,
// neighbour repair, slot reuse): concurrent plain, filtered and warm-started searches, exact
// re-scoring and sessions only ever see real vectors with their true scores, and the graph keeps
// its recall once the writers stop. Run under ThreadSanitizer by scripts/tsan.sh.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "test_harness.hpp"
#include "vsr/graph_index.hpp"
#include "vsr/session.hpp"

using namespace vsr;

namespace {

constexpr std::size_t kDim = 16;

// Vector of an id: a deterministic pseudo-random function (full rank, no ties), so any result can
// be checked without locks.
void vector_of(idx_t id, float* out) { vsr_test::hashed_vector(id, kDim, 1, out); }

double dot_with(const float* q, idx_t id) { return vsr_test::hashed_dot(q, id, kDim, 1); }

// Every returned id is a real vector (no torn rows, no free slots) and its score is exact.
int bad_results(const float* q, const float* scores, const idx_t* ids, std::size_t k) {
  int bad = 0;
  for (std::size_t j = 0; j < k; ++j) {
    if (ids[j] < 0 || std::fabs(dot_with(q, ids[j]) - scores[j]) > 1e-3) ++bad;
    if (j > 0 && scores[j] > scores[j - 1] + 1e-6f) ++bad;  // best first
  }
  return bad;
}

std::vector<float> rows_of(const std::vector<idx_t>& ids) { return vsr_test::hashed_rows(ids, kDim, 1); }

}  // namespace

TEST(graph_searches_stay_correct_while_vectors_are_added_and_removed) {
  const std::size_t base = 600, k = 8;
  GraphOptions o;
  o.metric = Metric::inner_product;
  o.storage = Storage::int8;
  o.M = 8;
  o.ef_construction = 48;
  o.ef_search = 32;
  auto index = GraphIndex::make(kDim, o).value();
  index->set_num_threads(2);
  std::vector<idx_t> base_ids(base);
  for (std::size_t i = 0; i < base; ++i) base_ids[i] = idx_t(i);
  std::vector<float> x = rows_of(base_ids);
  CHECK(index->add(x.data(), base, base_ids.data()).ok());

  std::atomic<bool> stop{false};
  std::atomic<int> errors{0};
  std::atomic<std::size_t> searches{0};
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      std::vector<float> q(2 * kDim), s(2 * k);
      std::vector<idx_t> out(2 * k);
      vector_of(idx_t(5000 + r), q.data());
      vector_of(idx_t(6000 + r), q.data() + kDim);
      IdFilter deny;
      deny.mode = IdFilter::Mode::deny;
      for (idx_t id = 0; id < 300; id += 2) deny.ids.insert(id);
      SearchParams p;
      p.num_threads = 2;
      SearchParams filtered;
      filtered.filter = &deny;
      int turn = 0;
      while (!stop.load()) {
        if (!index->search(q.data(), 2, k, s.data(), out.data(), p).ok()) errors.fetch_add(1);
        errors.fetch_add(bad_results(q.data(), s.data(), out.data(), k));
        errors.fetch_add(bad_results(q.data() + kDim, s.data() + k, out.data() + k, k));
        if (!index->search(q.data(), 1, k, s.data(), out.data(), filtered).ok()) errors.fetch_add(1);
        errors.fetch_add(bad_results(q.data(), s.data(), out.data(), k));
        for (std::size_t j = 0; j < k; ++j) errors.fetch_add(out[j] >= 0 && !deny.accepts(out[j]));
        // Warm start from base ids (never removed).
        const idx_t seeds[3] = {idx_t(r), idx_t(r + 10), idx_t(r + 20)};
        if (!index->search_warm(q.data(), k, seeds, 3, s.data(), out.data(), SearchParams()).ok())
          errors.fetch_add(1);
        errors.fetch_add(bad_results(q.data(), s.data(), out.data(), k));
        float sc;
        if (!index->score_ids(q.data(), &seeds[0], 1, &sc).ok() || std::fabs(sc - dot_with(q.data(), seeds[0])) > 1e-3)
          errors.fetch_add(1);
        // A session refines through pool / warm / cold paths while the index changes under it
        // (a changed index makes its pool stale: the refine must still be correct).
        SessionOptions so;
        so.pool_size = 24;
        so.exclude_seen = (turn++ % 2) == 0;
        auto session = Session::start(*index, q.data(), k, so);
        if (!session.ok()) {
          errors.fetch_add(1);
        } else {
          std::set<idx_t> seen(session.value()->ids().begin(), session.value()->ids().end());
          if (!session.value()->refine(q.data() + kDim, k, s.data(), out.data(), nullptr).ok()) errors.fetch_add(1);
          errors.fetch_add(bad_results(q.data() + kDim, s.data(), out.data(), k));
          if (so.exclude_seen)
            for (std::size_t j = 0; j < k; ++j) errors.fetch_add(seen.count(out[j]) != 0);
        }
        searches.fetch_add(1);
      }
    });
  }
  // Another reader keeps changing the search knob.
  threads.emplace_back([&] {
    std::size_t ef = 16;
    while (!stop.load()) {
      if (!index->set_ef_search(ef).ok()) errors.fetch_add(1);
      ef = ef == 16 ? 48 : 16;
      std::this_thread::yield();
    }
  });
  std::thread writer([&] {
    for (int round = 0; round < 20; ++round) {
      std::vector<idx_t> bid(24);
      for (std::size_t i = 0; i < bid.size(); ++i) bid[i] = idx_t(100000 + round * 24 + int(i));
      std::vector<float> batch = rows_of(bid);
      if (!index->add(batch.data(), bid.size(), bid.data()).ok()) errors.fetch_add(1);
      if (round % 2 == 1) {  // removes half of this batch (their slots are reused by the next add)
        if (!index->remove(bid.data(), bid.size() / 2).ok()) errors.fetch_add(1);
      }
    }
    stop.store(true);
  });
  writer.join();
  for (auto& t : threads) t.join();
  CHECK(errors.load() == 0);
  CHECK(searches.load() > 0);
  CHECK(index->size() == base + 20 * 24 - 10 * 12);

  // Once writers stop, the graph holds every live vector reachably: recall against brute force.
  std::vector<idx_t> live = base_ids;
  for (int round = 0; round < 20; ++round)
    for (std::size_t i = (round % 2 == 1) ? 12 : 0; i < 24; ++i) live.push_back(idx_t(100000 + round * 24 + int(i)));
  CHECK(index->set_ef_search(64).ok());
  double hits = 0;
  const int nq = 40;
  for (int t = 0; t < nq; ++t) {
    float q[kDim];
    vector_of(idx_t(7000 + t), q);
    std::vector<std::pair<double, idx_t>> all;
    for (idx_t id : live) all.push_back({-dot_with(q, id), id});
    std::partial_sort(all.begin(), all.begin() + k, all.end());
    float s[k];
    idx_t out[k];
    CHECK(index->search(q, 1, k, s, out, SearchParams()).ok());
    for (std::size_t j = 0; j < k; ++j)
      for (std::size_t i = 0; i < k; ++i) hits += out[j] == all[i].second;
  }
  const double recall = hits / double(nq * k);
  std::printf("recall@%zu after concurrent churn: %.3f\n", k, recall);
  CHECK(recall >= 0.95);
}

VSR_TEST_MAIN

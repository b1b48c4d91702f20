// The thread pool runs every task exactly once under concurrent and nested use, and a FlatIndex
// answers correctly while other threads add and remove vectors. Run under ThreadSanitizer by
// scripts/tsan.sh.
#include <atomic>
#include <cmath>
#include <stdexcept>
#include <thread>
#include <vector>

#include "test_harness.hpp"
#include "vsr/flat_index.hpp"
#include "vsr/parallel.hpp"

using namespace vsr;

TEST(pool_runs_each_task_once_from_concurrent_and_nested_callers) {
  constexpr std::size_t kTasks = 200;
  std::vector<std::thread> callers;
  std::atomic<int> bad{0};
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int rep = 0; rep < 30; ++rep) {
        std::vector<std::atomic<int>> hits(kTasks);
        parallel_for(kTasks, 3, [&](std::size_t i) {
          hits[i].fetch_add(1);
          if (i % 50 == 0) {  // nested job from inside a task
            std::atomic<int> inner{0};
            parallel_for(10, 2, [&](std::size_t) { inner.fetch_add(1); });
            if (inner.load() != 10) bad.fetch_add(1);
          }
        });
        for (auto& h : hits)
          if (h.load() != 1) bad.fetch_add(1);
      }
    });
  }
  for (auto& t : callers) t.join();
  CHECK(bad.load() == 0);
}

TEST(pool_propagates_exceptions_and_stays_usable) {
  bool caught = false;
  try {
    parallel_for(50, 4, [](std::size_t i) {
      if (i == 17) throw std::runtime_error("task 17 failed");
    });
  } catch (const std::runtime_error& e) {
    caught = std::string(e.what()) == "task 17 failed";
  }
  CHECK(caught);
  std::atomic<int> n{0};
  parallel_for(64, 4, [&](std::size_t) { n.fetch_add(1); });
  CHECK(n.load() == 64);
  std::atomic<std::size_t> covered{0};
  parallel_for_chunks(1001, 4, [&](std::size_t b, std::size_t e) { covered.fetch_add(e - b); });
  CHECK(covered.load() == 1001);
}

// Vector of an id: a deterministic function, so any result can be checked without locks.
static void vector_of(idx_t id, std::size_t d, float* out) {
  for (std::size_t i = 0; i < d; ++i) out[i] = std::sin(0.37f * float(id) + 1.3f * float(i));
}

TEST(searches_stay_correct_while_vectors_are_added_and_removed) {
  const std::size_t d = 16, base = 400, k = 8;
  FlatOptions o;
  o.metric = Metric::inner_product;
  o.storage = Storage::f32;
  auto index = FlatIndex::make(d, o).value();
  std::vector<float> x(base * d);
  std::vector<idx_t> ids(base);
  for (std::size_t i = 0; i < base; ++i) {
    ids[i] = idx_t(i);
    vector_of(ids[i], d, &x[i * d]);
  }
  CHECK(index->add(x.data(), base, ids.data()).ok());

  std::atomic<bool> stop{false};
  std::atomic<int> errors{0};
  std::atomic<std::size_t> searches{0};
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      std::vector<float> q(2 * d), s(2 * k), v(d);
      std::vector<idx_t> out(2 * k);
      vector_of(idx_t(1000 + r), d, q.data());
      vector_of(idx_t(2000 + r), d, q.data() + d);
      SearchParams p;
      p.num_threads = 2;
      while (!stop.load()) {
        if (!index->search(q.data(), 2, k, s.data(), out.data(), p).ok()) errors.fetch_add(1);
        for (std::size_t j = 0; j < 2 * k; ++j) {
          // Every result is a real vector with its true score: no torn rows, no stale ids.
          if (out[j] < 0) {
            errors.fetch_add(1);
            continue;
          }
          vector_of(out[j], d, v.data());
          double dot = 0;
          for (std::size_t i = 0; i < d; ++i) dot += double(q[(j / k) * d + i]) * v[i];
          if (std::fabs(dot - s[j]) > 1e-3) errors.fetch_add(1);
        }
        RangeResult rr;
        if (!index->range_search(q.data(), 1, 3.0f, &rr, p).ok()) errors.fetch_add(1);
        float sc;
        idx_t always = idx_t(r);  // base ids are never removed
        if (!index->score_ids(q.data(), &always, 1, &sc).ok()) errors.fetch_add(1);
        searches.fetch_add(1);
      }
    });
  }
  std::thread writer([&] {
    std::vector<float> batch(20 * d);
    std::vector<idx_t> bid(20);
    for (int round = 0; round < 60; ++round) {
      for (std::size_t i = 0; i < 20; ++i) {
        bid[i] = idx_t(100000 + round * 20 + int(i));
        vector_of(bid[i], d, &batch[i * d]);
      }
      if (!index->add(batch.data(), 20, bid.data()).ok()) errors.fetch_add(1);
      if (round % 2 == 1 && !index->remove(bid.data(), 10).ok()) errors.fetch_add(1);
    }
    stop.store(true);
  });
  writer.join();
  for (auto& t : threads) t.join();
  CHECK(errors.load() == 0);
  CHECK(searches.load() > 0);
  CHECK(index->size() == base + 60 * 20 - 30 * 10);
}

VSR_TEST_MAIN

// Stress: reader threads search (plain, filtered), run sessions with refines, group refinements,
// exact re-scoring and row reads while a writer adds (explicit and automatic ids), removes and
// saves, phase after phase, on the exact index (f32, int8 + re-rank) and the graph index. During the
// churn every answer is checked for what must hold whatever the interleaving; after each phase the
// index is compared with an exact reference, and every file saved during the churn must hold the
// ids that were live when it was written. Any failed call fails the test. scripts/tsan.sh runs it
// under ThreadSanitizer.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "test_harness.hpp"
#include "vsr/flat_index.hpp"
#include "vsr/graph_index.hpp"
#include "vsr/session.hpp"

using namespace vsr;

namespace {

constexpr std::size_t kDim = 16, kK = 6;
constexpr idx_t kBase = 400;  // ids below kBase are never removed

void vector_of(idx_t id, float* out) { vsr_test::hashed_vector(id, kDim, 7, out); }

std::vector<float> rows_of(const std::vector<idx_t>& ids) { return vsr_test::hashed_rows(ids, kDim, 7); }

double dot_with(const float* q, idx_t id) { return vsr_test::hashed_dot(q, id, kDim, 7); }

// Holds for any answer given during the churn: real ids, each once, best first, exact scores,
// inside the allow-list when there is one. Returns the number of violations.
int violations(const float* q, const float* s, const idx_t* ids, std::size_t k, const std::set<idx_t>* allow = nullptr) {
  int bad = 0;
  std::set<idx_t> seen;
  for (std::size_t j = 0; j < k; ++j) {
    if (ids[j] < 0) continue;
    bad += !seen.insert(ids[j]).second;
    bad += std::fabs(dot_with(q, ids[j]) - s[j]) > 1e-3;
    bad += j > 0 && ids[j - 1] >= 0 && s[j] > s[j - 1] + 1e-5f;
    bad += allow != nullptr && allow->count(ids[j]) == 0;
  }
  return bad;
}

enum class Kind { flat_f32, flat_int8, graph_int8 };

std::unique_ptr<Index> make(Kind kind) {
  if (kind == Kind::graph_int8) {
    GraphOptions o;
    o.storage = Storage::int8;
    o.M = 8;
    o.ef_construction = 40;
    o.ef_search = 40;
    auto g = GraphIndex::make(kDim, o).value();
    g->set_num_threads(2);
    return g;
  }
  FlatOptions o;
  o.storage = kind == Kind::flat_f32 ? Storage::f32 : Storage::int8;
  o.rerank = kind == Kind::flat_f32 ? 0 : 4;
  return FlatIndex::make(kDim, o).value();
}

Result<std::unique_ptr<Index>> load_as(Kind kind, const std::string& path, bool mmap) {
  if (kind == Kind::graph_int8) {
    auto r = GraphIndex::load(path, mmap, true);
    if (!r.ok()) return r.error();
    return std::unique_ptr<Index>(std::move(r).value());
  }
  auto r = FlatIndex::load(path, mmap, true);
  if (!r.ok()) return r.error();
  return std::unique_ptr<Index>(std::move(r).value());
}

void stress(Kind kind, const char* name) {
  const std::string dir = "/tmp/vsr_stress_" + std::to_string(::getpid()) + "_" + name;
  std::unique_ptr<Index> index = make(kind);
  std::vector<idx_t> base(kBase);
  for (idx_t i = 0; i < kBase; ++i) base[std::size_t(i)] = i;
  auto x = rows_of(base);
  CHECK(index->add(x.data(), base.size(), base.data()).ok());
  std::set<idx_t> live(base.begin(), base.end());
  IdFilter allow;
  allow.mode = IdFilter::Mode::allow;
  for (idx_t id = 0; id < kBase; id += 5) allow.ids.insert(id);
  const std::set<idx_t> allow_set(allow.ids.begin(), allow.ids.end());
  idx_t next_id = kBase;
  std::vector<std::pair<std::string, std::set<idx_t>>> saves;
  const bool exact = kind == Kind::flat_f32;

  for (int phase = 0; phase < 3; ++phase) {
    std::atomic<bool> stop{false};
    std::atomic<int> errors{0};
    std::atomic<int> rounds{0};
    std::vector<std::thread> readers;
    for (int r = 0; r < 3; ++r) {
      readers.emplace_back([&, r] {
        std::mt19937 rng(unsigned(100 * phase + r));
        std::normal_distribution<float> noise(0.f, 0.05f);
        float q[kDim], q2[kDim], group[4 * kDim], s[4 * kK];
        idx_t ids[4 * kK];
        int done = 0;
        while (!stop.load() || done < 3) {
          vector_of(idx_t(1'000'000 + rng() % 64), q);
          SearchParams plain;
          errors += !index->search(q, 1, kK, s, ids, plain).ok();
          errors += violations(q, s, ids, kK);
          for (std::size_t j = 0; j < kK; ++j) errors += ids[j] < 0;
          SearchParams filtered;
          filtered.filter = &allow;
          errors += !index->search(q, 1, kK, s, ids, filtered).ok();
          errors += violations(q, s, ids, kK, &allow_set);
          // A session with two refines; exclude_seen never repeats an id.
          SessionOptions so;
          so.pool_size = 32;
          so.exclude_seen = true;
          auto session = Session::start(*index, q, kK, so);
          if (!session.ok()) {
            ++errors;
          } else {
            std::set<idx_t> seen(session.value()->ids().begin(), session.value()->ids().end());
            for (int turn = 0; turn < 2; ++turn) {
              for (std::size_t i = 0; i < kDim; ++i) q2[i] = q[i] + noise(rng);
              errors += !session.value()->refine(q2, kK, s, ids, nullptr).ok();
              errors += violations(q2, s, ids, kK);
              for (std::size_t j = 0; j < kK; ++j)
                if (ids[j] >= 0) errors += !seen.insert(ids[j]).second;
            }
          }
          for (std::size_t g = 0; g < 4; ++g)
            for (std::size_t i = 0; i < kDim; ++i) group[g * kDim + i] = q[i] + noise(rng);
          GroupOptions go;
          go.pool_size = 48;
          errors += !refine_group(*index, q, group, 4, kK, go, s, ids, nullptr, nullptr).ok();
          for (std::size_t g = 0; g < 4; ++g) errors += violations(group + g * kDim, s + g * kK, ids + g * kK, kK);
          const idx_t pick[2] = {idx_t(rng() % kBase), idx_t(rng() % kBase)};
          float rows[2 * kDim], sc[2];
          errors += !index->reconstruct(pick, 2, rows).ok();
          errors += !index->score_ids(q, pick, 2, sc).ok();
          for (int j = 0; j < 2; ++j) errors += std::fabs(sc[j] - dot_with(q, pick[j])) > 1e-3;
          ++done;
          ++rounds;
        }
      });
    }
    std::thread writer([&] {
      std::mt19937 rng(unsigned(7 + phase));
      for (int round = 0; round < 60; ++round) {
        std::vector<idx_t> fresh(5);
        for (std::size_t i = 0; i < fresh.size(); ++i) fresh[i] = next_id + idx_t(i);
        auto rows = rows_of(fresh);
        // Every third batch takes automatic ids: they must be the next ones after the largest id.
        errors += !index->add(rows.data(), fresh.size(), round % 3 == 0 ? nullptr : fresh.data()).ok();
        next_id += idx_t(fresh.size());
        live.insert(fresh.begin(), fresh.end());
        std::vector<idx_t> removable;
        for (idx_t id : live)
          if (id >= kBase) removable.push_back(id);
        std::shuffle(removable.begin(), removable.end(), rng);
        removable.resize(std::min<std::size_t>(removable.size(), 3));
        errors += !index->remove(removable.data(), removable.size()).ok();
        for (idx_t id : removable) live.erase(id);
        if (round % 20 == 0) {
          const std::string path = dir + "_" + std::to_string(phase) + "_" + std::to_string(round) + ".vsr";
          errors += !index->save(path).ok();
          saves.emplace_back(path, live);
        }
      }
      stop.store(true);
    });
    writer.join();
    for (auto& t : readers) t.join();
    if (errors.load() != 0) std::fprintf(stderr, "%s phase %d: %d violations\n", name, phase, errors.load());
    CHECK(errors.load() == 0);
    CHECK(rounds.load() >= 9);

    // Quiescent: the index is the reference exactly.
    CHECK(index->size() == live.size());
    const std::vector<idx_t> ids(live.begin(), live.end());
    std::vector<float> rows(ids.size() * kDim);
    CHECK(index->reconstruct(ids.data(), ids.size(), rows.data()).ok());
    const auto want = rows_of(ids);
    double worst = 0;
    for (std::size_t i = 0; i < rows.size(); ++i) worst = std::max(worst, double(std::fabs(rows[i] - want[i])));
    CHECK(worst == 0);
    double hits = 0;
    for (int t = 0; t < 20; ++t) {
      float q[kDim], s[kK];
      idx_t got[kK];
      vector_of(idx_t(2'000'000 + t), q);
      CHECK(index->search(q, 1, kK, s, got, SearchParams()).ok());
      std::vector<std::pair<double, idx_t>> all;
      for (idx_t id : ids) all.push_back({-dot_with(q, id), id});
      std::partial_sort(all.begin(), all.begin() + kK, all.end());
      for (std::size_t j = 0; j < kK; ++j) {
        for (std::size_t i = 0; i < kK; ++i) hits += got[j] == all[i].second;
        if (exact) CHECK(got[j] == all[j].second);
      }
    }
    CHECK(hits / (20.0 * kK) >= (kind == Kind::graph_int8 ? 0.9 : 0.99));
  }
  // Every file saved during the churn holds exactly the ids live when it was written.
  CHECK(saves.size() == 9);
  for (const auto& [path, ids_then] : saves) {
    for (bool mmap : {true, false}) {
      auto loaded = load_as(kind, path, mmap);
      CHECK(loaded.ok());
      if (!loaded.ok()) continue;
      CHECK(loaded.value()->size() == ids_then.size());
      const std::vector<idx_t> ids(ids_then.begin(), ids_then.end());
      std::vector<float> rows(ids.size() * kDim);
      CHECK(loaded.value()->reconstruct(ids.data(), ids.size(), rows.data()).ok());
    }
    std::remove(path.c_str());
  }
  std::printf("%s: stress phases passed\n", name);
}

}  // namespace

TEST(exact_f32_index_under_concurrent_writes_sessions_groups_and_saves) { stress(Kind::flat_f32, "flat_f32"); }
TEST(exact_int8_rerank_index_under_concurrent_writes_sessions_groups_and_saves) { stress(Kind::flat_int8, "flat_int8"); }
TEST(graph_index_under_concurrent_writes_sessions_groups_and_saves) { stress(Kind::graph_int8, "graph_int8"); }

VSR_TEST_MAIN

// Every mutation of an index is all-or-nothing, also when memory runs out part-way: this test
// replaces the global allocation functions with ones that fail on request, then runs add and
// remove with the first, second, third, ... allocation failing (once, and from then on) until the
// call succeeds. After every failed call the index must be exactly what it was before: the same
// saved bytes, the same search results, and a file that loads. After the call that succeeds it
// must hold exactly the new contents.
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "test_harness.hpp"
#include "vsr/flat_index.hpp"
#include "vsr/graph_index.hpp"

namespace {

// Allocations left before one fails (-1 = never); when `sticky`, every later one fails too.
std::atomic<long> g_countdown{-1};
std::atomic<bool> g_sticky{false};
std::atomic<bool> g_failing{false};

void* allocate(std::size_t bytes, std::size_t align) {
  if (g_failing.load(std::memory_order_relaxed)) throw std::bad_alloc();
  long left = g_countdown.load(std::memory_order_relaxed);
  while (left >= 0) {
    if (g_countdown.compare_exchange_weak(left, left - 1, std::memory_order_relaxed)) {
      if (left == 0) {
        if (g_sticky.load(std::memory_order_relaxed)) g_failing.store(true, std::memory_order_relaxed);
        throw std::bad_alloc();
      }
      break;
    }
  }
  if (bytes == 0) bytes = 1;
  void* p = nullptr;
  if (align <= alignof(std::max_align_t)) {
    p = std::malloc(bytes);
  } else if (::posix_memalign(&p, align, bytes) != 0) {
    p = nullptr;
  }
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

// Arms the failure: the allocation after `after` successful ones fails.
void fail_after(long after, bool sticky) {
  g_failing.store(false);
  g_sticky.store(sticky);
  g_countdown.store(after);
}
void disarm() {
  g_countdown.store(-1);
  g_failing.store(false);
}

}  // namespace

void* operator new(std::size_t n) { return allocate(n, 0); }
void* operator new[](std::size_t n) { return allocate(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return allocate(n, std::size_t(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return allocate(n, std::size_t(a)); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

using namespace vsr;

namespace {

constexpr std::size_t kDim = 12, kQueries = 6, kK = 5;

std::vector<float> random_rows(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n * kDim);
  for (float& x : v) x = dist(rng);
  return v;
}

std::string temp_dir() {
  char tmpl[] = "/tmp/vsr_alloc_XXXXXX";
  const char* d = ::mkdtemp(tmpl);
  return d != nullptr ? std::string(d) : std::string("/tmp");
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// What a test compares before and after a failed call: the saved file and search results.
struct Snapshot {
  std::string file;
  std::vector<idx_t> ids;
  std::vector<float> scores;
  std::size_t size = 0;
  bool operator==(const Snapshot& o) const {
    return file == o.file && ids == o.ids && scores == o.scores && size == o.size;
  }
};

template <class IndexT>
Snapshot snapshot(const IndexT& index, const std::string& path) {
  Snapshot s;
  s.size = index.size();
  CHECK(index.save(path).ok());
  s.file = read_file(path);
  const std::vector<float> q = random_rows(kQueries, 99);
  const std::size_t k = std::min(kK, s.size);
  s.ids.resize(kQueries * k);
  s.scores.resize(kQueries * k);
  if (k > 0) CHECK(index.search(q.data(), kQueries, k, s.scores.data(), s.ids.data(), SearchParams()).ok());
  return s;
}

// The stored row of `id` is `x` (normalised for cosine) within `tol` per component.
bool row_matches(const Index& index, idx_t id, const float* x, Metric metric, float tol) {
  std::vector<float> row(kDim), want(x, x + kDim);
  if (!index.reconstruct(&id, 1, row.data()).ok()) return false;
  if (metric == Metric::cosine) {
    double n = 0;
    for (float v : want) n += double(v) * v;
    for (float& v : want) v = float(v / std::sqrt(n));
  }
  for (std::size_t i = 0; i < kDim; ++i)
    if (std::fabs(row[i] - want[i]) > tol * (1 + std::fabs(want[i]))) return false;
  return true;
}

std::vector<idx_t> id_range(idx_t from, std::size_t n) {
  std::vector<idx_t> ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = from + idx_t(i);
  return ids;
}

template <class IndexT>
std::unique_ptr<IndexT> open_copy(const std::string& file, bool mapped, int threads) {
  auto loaded = IndexT::load(file, mapped, true);
  CHECK(loaded.ok());
  std::unique_ptr<IndexT> index = std::move(loaded).value();
  index->set_num_threads(threads);
  return index;
}

// Runs `op` on fresh copies of the index saved in `file`, with the n-th allocation failing
// (n = 0, 1, ..., until op runs without reaching the failure). A call that fails must leave its
// copy exactly as loaded; a call that succeeds (it recovered from the failure) must leave the
// same index as a call without failures (`same_result`: byte for byte, else the same size).
// Returns how many allocations op made.
template <class IndexT, class Op>
long check_all_or_nothing(const std::string& dir, const std::string& file, bool mapped, int threads, bool sticky,
                          bool same_result, Op op) {
  auto reference = open_copy<IndexT>(file, mapped, threads);
  CHECK(op(*reference).ok());
  const Snapshot expected = snapshot(*reference, dir + "/expected.vsr");
  const Snapshot before = snapshot(*open_copy<IndexT>(file, mapped, threads), dir + "/before.vsr");
  for (long n = 0; n < 100000; ++n) {
    auto index = open_copy<IndexT>(file, mapped, threads);
    fail_after(n, sticky);
    Status st;
    bool threw = false;
    try {
      st = op(*index);
    } catch (const std::bad_alloc&) {
      threw = true;
    }
    const bool fired = g_countdown.load() < 0 || g_failing.load();
    disarm();
    if (!fired) {  // op made fewer than n + 1 allocations: every failure point was tried
      CHECK(!threw && st.ok());
      return n;
    }
    const Snapshot after = snapshot(*index, dir + "/after.vsr");
    if (threw) {
      const bool unchanged = after == before;
      if (!unchanged) std::fprintf(stderr, "allocation %ld failing (sticky %d) changed the index\n", n, int(sticky));
      CHECK(unchanged);
      CHECK(IndexT::load(dir + "/after.vsr", false, true).ok());
    } else {
      CHECK(st.ok());
      CHECK(same_result ? after == expected : after.size == expected.size);
    }
    if (vsr_test::failures() > 0) return n;
  }
  CHECK(false);
  return -1;
}

}  // namespace

TEST(flat_add_and_remove_are_all_or_nothing_under_allocation_failure) {
  const std::string dir = temp_dir();
  struct Case {
    Metric metric;
    Storage storage;
    std::size_t rerank;
  };
  for (const Case& c : {Case{Metric::inner_product, Storage::int8, 2}, Case{Metric::l2, Storage::f32, 0},
                        Case{Metric::cosine, Storage::bf16, 1}}) {
    FlatOptions o;
    o.metric = c.metric;
    o.storage = c.storage;
    o.rerank = c.rerank;
    std::unique_ptr<FlatIndex> index = FlatIndex::make(kDim, o).value();
    const std::vector<float> base = random_rows(40, 1);
    CHECK(index->add(base.data(), 40, nullptr).ok());
    CHECK(index->save(dir + "/base.vsr").ok());
    const std::vector<float> extra = random_rows(7, 2);
    const std::vector<idx_t> gone = {3, 39, 17};
    // Mapped: the first write also copies the rows out of the mapped file.
    for (bool mapped : {false, true}) {
      for (bool sticky : {false, true}) {
        const long adds = check_all_or_nothing<FlatIndex>(dir, dir + "/base.vsr", mapped, 1, sticky, true,
                                                          [&](FlatIndex& x) { return x.add(extra.data(), 7, nullptr); });
        const long removes = check_all_or_nothing<FlatIndex>(
            dir, dir + "/base.vsr", mapped, 1, sticky, true, [&](FlatIndex& x) { return x.remove(gone.data(), 3); });
        std::printf("flat (metric %d, storage %d, mapped %d, sticky %d): %ld allocations in add, %ld in remove\n",
                    int(c.metric), int(c.storage), int(mapped), int(sticky), adds, removes);
        CHECK(adds > 3);
      }
    }
    // The successful add stored the new rows under the automatic ids after the old ones.
    CHECK(index->add(extra.data(), 7, nullptr).ok());
    CHECK(row_matches(*index, 43, extra.data() + 3 * kDim, c.metric, 0.05f));
  }
}

TEST(graph_add_and_remove_are_all_or_nothing_under_allocation_failure) {
  const std::string dir = temp_dir();
  GraphOptions o;
  o.metric = Metric::inner_product;
  o.storage = Storage::int8;
  o.M = 4;
  o.ef_construction = 16;
  o.ef_search = 16;
  std::unique_ptr<GraphIndex> index = GraphIndex::make(kDim, o).value();
  const std::vector<float> base = random_rows(120, 3);
  CHECK(index->add(base.data(), 120, nullptr).ok());
  const std::vector<idx_t> early = id_range(10, 30);
  CHECK(index->remove(early.data(), early.size()).ok());  // free slots for the add to reuse
  CHECK(index->save(dir + "/base.vsr").ok());
  const std::vector<float> extra = random_rows(60, 4);
  const std::vector<idx_t> gone = id_range(50, 40);
  for (int threads : {1, 2}) {
    for (bool mapped : {false, true}) {
      for (bool sticky : {false, true}) {
        // Two workers insert in a varying order, so only one worker's result is reproducible.
        const bool same = threads == 1;
        const long adds = check_all_or_nothing<GraphIndex>(dir, dir + "/base.vsr", mapped, threads, sticky, same,
                                                           [&](GraphIndex& x) { return x.add(extra.data(), 60, nullptr); });
        const long removes = check_all_or_nothing<GraphIndex>(
            dir, dir + "/base.vsr", mapped, threads, sticky, same,
            [&](GraphIndex& x) { return x.remove(gone.data(), gone.size()); });
        std::printf("graph (%d threads, mapped %d, sticky %d): %ld allocations in add, %ld in remove\n", threads,
                    int(mapped), int(sticky), adds, removes);
        CHECK(adds > 3);
      }
    }
  }
  CHECK(index->add(extra.data(), 60, nullptr).ok());
  CHECK(row_matches(*index, 125, extra.data() + 5 * kDim, Metric::inner_product, 1e-6f));
}

VSR_TEST_MAIN

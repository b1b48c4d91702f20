// GraphIndex: construction (parallel insertion), removal with neighbour repair, bookkeeping.
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <unordered_set>

#include "vsr/graph_index.hpp"
#include "vsr/input_checks.hpp"
#include "vsr/parallel.hpp"

namespace vsr {

GraphIndex::GraphIndex(std::size_t dim, const GraphOptions& options)
    : dim_(dim),
      opts_(options),
      codec_(options.storage, dim, default_isa()),
      kernels_(kernels_for(default_isa())),
      row_kernels_(&kernels_for(codec_.isa())->storage[std::size_t(options.storage)]),
      keep_originals_(options.storage != Storage::f32),
      ef_search_(options.ef_search),
      node_locks_(new std::mutex[kNodeLocks]) {}

Result<std::unique_ptr<GraphIndex>> GraphIndex::make(std::size_t dim, const GraphOptions& options) {
  if (dim == 0) return make_error(ErrorCode::invalid_argument, "dim must be positive, got 0");
  if (options.M < 2 || options.M > 256)
    return make_error(ErrorCode::invalid_argument, "M must be in [2, 256], got " + std::to_string(options.M));
  if (options.ef_construction == 0)
    return make_error(ErrorCode::invalid_argument, "ef_construction must be positive");
  if (options.ef_search == 0) return make_error(ErrorCode::invalid_argument, "ef_search must be positive");
  if (int(options.metric) > int(Metric::l2)) return make_error(ErrorCode::invalid_argument, "unknown metric");
  if (std::size_t(options.storage) >= kNumStorages) return make_error(ErrorCode::invalid_argument, "unknown storage");
  return std::unique_ptr<GraphIndex>(new GraphIndex(dim, options));
}

std::size_t GraphIndex::size() const noexcept {
  std::shared_lock lock(mutex_);
  return live_;
}

bool GraphIndex::is_mapped() const noexcept {
  std::shared_lock lock(mutex_);
  return file_ != nullptr && file_->mapped();
}

Status GraphIndex::set_ef_search(std::size_t ef) {
  if (ef == 0) return make_error(ErrorCode::invalid_argument, "ef_search must be positive");
  ef_search_.store(ef);
  return {};
}

std::size_t GraphIndex::link_count() const {
  std::shared_lock lock(mutex_);
  std::size_t total = 0;
  for (std::uint32_t s = 0; s < capacity(); ++s) {
    if (ids_[s] == kNoId) continue;
    for (int l = 0; l <= levels_[s]; ++l) total += links(s, l)[0];
  }
  return total;
}

std::optional<float> GraphIndex::max_norm() const noexcept {
  float m = max_norm_.load();
  if (m < 0) {
    std::shared_lock lock(mutex_);
    std::vector<float> buf(dim_);
    m = 0;
    for (std::uint32_t s = 0; s < capacity(); ++s) {
      if (ids_[s] == kNoId) continue;
      const float* x = keep_originals_ ? originals_.data() + std::size_t(s) * dim_ : buf.data();
      if (!keep_originals_) decode_slot(s, buf.data());
      m = std::max(m, std::sqrt(kernels_->dot_f32(x, x, dim_)));
    }
    max_norm_.store(m);
  }
  return m * (1 + 1e-5f);
}

int GraphIndex::random_level(std::uint32_t slot) const noexcept {
  // Geometric levels with mL = 1 / ln(M): each layer holds ~1/M of the one below.
  std::mt19937_64 rng(opts_.seed ^ (0x9E3779B97F4A7C15ull * (std::uint64_t(slot) + 1 + generation_.load())));
  std::uniform_real_distribution<double> u(std::nextafter(0.0, 1.0), 1.0);
  const double level = -std::log(u(rng)) / std::log(double(opts_.M));
  return std::min(int(level), 15);
}

void GraphIndex::make_owned() {
  codes_.own();
  originals_.own();
  level0_.own();
  ids_.own();
  file_.reset();
}

void GraphIndex::grow(std::size_t cap) {
  const std::size_t old = capacity();
  if (cap <= old) return;
  codes_.own().resize(cap * codec_.row_bytes());
  if (keep_originals_) originals_.own().resize(cap * dim_);
  level0_.own().resize(cap * (1 + 2 * opts_.M), 0);
  ids_.own().resize(cap, kNoId);
  levels_.resize(cap, 0);
  upper_at_.resize(cap, 0);
}

void GraphIndex::compact_upper() {
  const std::size_t ustride = 1 + opts_.M;
  std::vector<std::uint32_t> kept;
  kept.reserve(upper_links_.size() - upper_garbage_);
  for (std::size_t s = 0; s < capacity(); ++s) {
    if (levels_[s] == 0 || ids_[s] == kNoId) continue;
    const std::size_t words = levels_[s] * ustride, at = kept.size();
    const auto block = upper_links_.begin() + std::ptrdiff_t(upper_at_[s]);
    kept.insert(kept.end(), block, block + std::ptrdiff_t(words));
    upper_at_[s] = at;
  }
  upper_links_.swap(kept);
  upper_garbage_ = 0;
}

void GraphIndex::allocate_upper(const std::vector<std::uint32_t>& slots) {
  const std::size_t ustride = 1 + opts_.M;
  std::size_t at = upper_links_.size(), need = 0;
  for (std::uint32_t s : slots) need += levels_[s] * ustride;
  upper_links_.resize(at + need, 0);  // zero counts: no links yet
  for (std::uint32_t s : slots) {
    upper_at_[s] = at;
    at += levels_[s] * ustride;
  }
}

Status GraphIndex::add(const float* vectors, std::size_t n, const idx_t* ids) {
  if (n == 0) return {};
  std::vector<float> normalized;
  Result<const float*> prepared = prepare_rows(vectors, n, dim_, opts_.metric, "vector", normalized);
  if (!prepared.ok()) return prepared.error();
  const float* rows = prepared.value();
  const std::size_t rb = codec_.row_bytes();
  std::vector<std::uint8_t> encoded(n * rb);
  Status st = codec_.encode(rows, n, encoded.data());
  if (!st.ok()) return st;

  std::unique_lock lock(mutex_);
  if (ids != nullptr) {
    Status id_check = check_new_ids(ids, n, slot_of_);
    if (!id_check.ok()) return id_check;
  }
  if (capacity() + n - std::min(n, free_slots_.size()) > std::size_t(kNoSlot))
    return make_error(ErrorCode::out_of_range, "a graph index holds at most 2^32 - 1 vectors");
  make_owned();
  // Slots: reuse those freed by removals first, then append.
  std::vector<std::uint32_t> slots(n);
  std::size_t fresh = capacity();
  for (std::size_t i = 0; i < n; ++i) {
    if (!free_slots_.empty()) {
      slots[i] = free_slots_.back();
      free_slots_.pop_back();
    } else {
      slots[i] = std::uint32_t(fresh++);
    }
  }
  grow(fresh);
  if (upper_garbage_ > upper_links_.size() / 2) compact_upper();  // before the new slots' levels are set
  auto& codes = codes_.own();
  auto& id_vec = ids_.own();
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t s = slots[i];
    std::memcpy(&codes[std::size_t(s) * rb], &encoded[i * rb], rb);
    if (keep_originals_)
      std::memcpy(&originals_.own()[std::size_t(s) * dim_], rows + i * dim_, dim_ * sizeof(float));
    const idx_t id = ids != nullptr ? ids[i] : next_id_ + idx_t(i);
    id_vec[s] = id;
    slot_of_.emplace(id, s);
    const int level = random_level(s);
    levels_[s] = std::uint8_t(level);
    level0_.own()[std::size_t(s) * (1 + 2 * opts_.M)] = 0;
  }
  allocate_upper(slots);
  for (std::size_t i = 0; i < n; ++i) next_id_ = std::max(next_id_, (ids != nullptr ? ids[i] : next_id_ + idx_t(i)) + 1);
  live_ += n;

  std::size_t first = 0;
  if (entry_ == kNoSlot) {
    entry_ = slots[0];
    max_level_ = levels_[slots[0]];
    first = 1;
  }
  const int threads = resolve_threads(num_threads_.load());
  // Small tasks keep the workers balanced; each insertion locks only the nodes it links.
  constexpr std::size_t kPerTask = 16;
  const std::size_t todo = n - first, tasks = (todo + kPerTask - 1) / kPerTask;
  // One worker needs no locks: nothing else touches the graph while the exclusive lock is held.
  const bool concurrent = threads > 1 && tasks > 1;
  parallel_for(tasks, threads, [&](std::size_t t) {
    for (std::size_t i = first + t * kPerTask; i < std::min(n, first + (t + 1) * kPerTask); ++i) {
      if (concurrent)
        insert<true>(slots[i], levels_[slots[i]]);
      else
        insert<false>(slots[i], levels_[slots[i]]);
    }
  });

  if (max_norm_.load() >= 0) {
    float m = max_norm_.load();
    for (std::size_t i = 0; i < n; ++i) {
      const float* x = rows + i * dim_;
      m = std::max(m, std::sqrt(kernels_->dot_f32(x, x, dim_)));
    }
    max_norm_.store(m);
  }
  if (!keep_originals_) max_norm_.store(-1.0f);  // stored forms may round above the input's norm
  generation_.fetch_add(1);
  return {};
}

GraphIndex::BuildScratch& GraphIndex::build_scratch() {
  thread_local BuildScratch scratch;
  return scratch;
}

template <bool locked>
void GraphIndex::insert(std::uint32_t slot, int level) {
  BuildScratch& sc = build_scratch();
  sc.query.resize(dim_);
  sc.row.resize(dim_);
  const float* q = row_f32(slot, sc.query.data());
  const WalkQuery wq = prepare_walk(q, sc.walk.prepared);
  std::unique_lock top_lock(entry_mutex_);
  std::uint32_t ep = entry_;
  const int top = max_level_;
  if (level <= top) top_lock.unlock();  // only a new top level keeps entry_ locked

  std::uint64_t dcount = 0;
  float ep_dist = dist_to(q, ep);
  ep = greedy_descend<locked>(wq, ep, ep_dist, top, level, dcount);
  std::vector<Candidate>& entry = sc.walk.entry;
  std::vector<Candidate>& found = sc.walk.found;
  entry.assign(1, Candidate{dist_to(q, ep), ep});
  for (int l = std::min(level, top); l >= 0; --l) {
    search_layer<locked>(wq, entry, opts_.ef_construction, l, nullptr, sc.walk, found, dcount);
    entry = found;
    select_neighbors(found, opts_.M, sc.chosen, sc.select);
    connect(slot, l, sc.chosen, sc);
  }
  if (level > top) {
    entry_ = slot;
    max_level_ = level;
  }
}

void GraphIndex::connect(std::uint32_t slot, int level, const std::vector<std::uint32_t>& neighbors,
                         BuildScratch& sc) {
  const std::size_t cap = max_links(level);
  {
    std::lock_guard lock(node_lock(slot));
    std::uint32_t* l = links_mut(slot, level);
    l[0] = std::uint32_t(neighbors.size());
    std::copy(neighbors.begin(), neighbors.end(), l + 1);
  }
  for (std::uint32_t nb : neighbors) {
    if (nb == slot) continue;
    std::lock_guard lock(node_lock(nb));
    std::uint32_t* l = links_mut(nb, level);
    if (std::find(l + 1, l + 1 + l[0], slot) != l + 1 + l[0]) continue;
    if (l[0] < cap) {
      l[1 + l[0]++] = slot;
      continue;
    }
    // Full: re-select among the old links plus the new node.
    const float* v = row_f32(nb, sc.row.data());
    sc.cands.clear();
    for (std::uint32_t i = 0; i < l[0]; ++i) sc.cands.push_back({dist_to(v, l[1 + i]), l[1 + i]});
    sc.cands.push_back({dist_to(v, slot), slot});
    select_neighbors(sc.cands, cap, sc.kept, sc.select);
    l[0] = std::uint32_t(sc.kept.size());
    std::copy(sc.kept.begin(), sc.kept.end(), l + 1);
  }
}

Status GraphIndex::remove(const idx_t* ids, std::size_t n) {
  if (n == 0) return {};
  if (ids == nullptr) return make_error(ErrorCode::invalid_argument, "ids is null");
  std::unique_lock lock(mutex_);
  Status st = check_existing_ids(ids, n, slot_of_);
  if (!st.ok()) return st;
  make_owned();
  std::vector<char> removed(capacity(), 0);
  for (std::size_t i = 0; i < n; ++i) removed[slot_of_.at(ids[i])] = 1;
  repair(removed);
  auto& id_vec = ids_.own();
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t s = slot_of_.at(ids[i]);
    slot_of_.erase(ids[i]);
    id_vec[s] = kNoId;
    level0_.own()[std::size_t(s) * (1 + 2 * opts_.M)] = 0;
    upper_garbage_ += std::size_t(levels_[s]) * (1 + opts_.M);
    levels_[s] = 0;
    free_slots_.push_back(s);
  }
  live_ -= n;
  if (entry_ != kNoSlot && removed[entry_]) {
    entry_ = kNoSlot;
    max_level_ = -1;
    for (std::uint32_t s = 0; s < capacity(); ++s)
      if (id_vec[s] != kNoId && int(levels_[s]) > max_level_) {
        entry_ = s;
        max_level_ = levels_[s];
      }
  }
  generation_.fetch_add(1);
  return {};
}

void GraphIndex::repair(const std::vector<char>& removed) {
  // Every surviving node that linked to a removed node re-selects its links among its surviving
  // links plus the removed node's surviving links (its two-hop neighbourhood through the hole).
  // Each node writes only its own links and reads only removed nodes' links, so nodes are
  // repaired in parallel without locks.
  const int threads = resolve_threads(num_threads_.load());
  for (int level = 0; level <= max_level_; ++level) {
    const std::size_t cap = max_links(level);
    parallel_for_chunks(capacity(), threads, [&](std::size_t b, std::size_t e) {
      std::vector<float> uv(dim_), buf;
      std::vector<Candidate> cands;
      std::vector<std::uint32_t> kept;
      std::unordered_set<std::uint32_t> pool;
      for (std::size_t u = b; u < e; ++u) {
        if (ids_[u] == kNoId || removed[u] || levels_[u] < level) continue;
        std::uint32_t* l = links_mut(std::uint32_t(u), level);
        bool touched = false;
        for (std::uint32_t i = 0; i < l[0] && !touched; ++i) touched = removed[l[1 + i]];
        if (!touched) continue;
        pool.clear();
        for (std::uint32_t i = 0; i < l[0]; ++i) {
          const std::uint32_t v = l[1 + i];
          if (!removed[v]) {
            pool.insert(v);
            continue;
          }
          const std::uint32_t* lv = links(v, level);
          for (std::uint32_t j = 0; j < lv[0]; ++j)
            if (!removed[lv[1 + j]] && lv[1 + j] != u) pool.insert(lv[1 + j]);
        }
        decode_slot(std::uint32_t(u), uv.data());
        cands.clear();
        for (std::uint32_t v : pool) cands.push_back({dist_to(uv.data(), v), v});
        select_neighbors(cands, cap, kept, buf);
        // Top up with the nearest pruned candidates up to the node's old degree: removals thin
        // the graph, and the extra links keep the hole's surroundings reachable.
        const std::size_t want = std::min<std::size_t>(cap, l[0]);
        for (const Candidate& c : cands) {
          if (kept.size() >= want) break;
          if (std::find(kept.begin(), kept.end(), c.slot) == kept.end()) kept.push_back(c.slot);
        }
        l[0] = std::uint32_t(kept.size());
        std::copy(kept.begin(), kept.end(), l + 1);
      }
    });
  }
}

}  // namespace vsr

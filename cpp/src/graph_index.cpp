// GraphIndex: construction (parallel insertion), removal with neighbour repair, bookkeeping.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <string>

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
  if (options.ef_construction == 0 || options.ef_construction > kMaxEf)
    return make_error(ErrorCode::invalid_argument,
                      "ef_construction must be in [1, 2^20], got " + std::to_string(options.ef_construction));
  if (options.ef_search == 0 || options.ef_search > kMaxEf)
    return make_error(ErrorCode::invalid_argument,
                      "ef_search must be in [1, 2^20], got " + std::to_string(options.ef_search));
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
  if (ef == 0 || ef > kMaxEf)
    return make_error(ErrorCode::invalid_argument, "ef_search must be in [1, 2^20], got " + std::to_string(ef));
  ef_search_.store(ef);
  return {};
}

Status GraphIndex::set_warm_ef_search(std::size_t ef) {
  if (ef > kMaxEf)
    return make_error(ErrorCode::invalid_argument, "warm_ef_search must be at most 2^20, got " + std::to_string(ef));
  warm_ef_search_.store(ef);
  return {};
}

std::size_t GraphIndex::link_count() const {
  std::shared_lock lock(mutex_);
  if (!check_file().ok()) return 0;
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
    if (!check_file().ok()) return std::nullopt;  // no bound: the next read reports the file
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

Status GraphIndex::check_file() const {
  return file_ != nullptr && file_->mapped() ? file_->check_unchanged() : Status();
}

void GraphIndex::make_owned() {
  codes_.own();
  originals_.own();
  level0_.own();
  ids_.own();
  file_.reset();
}

void GraphIndex::reserve_slots(std::size_t cap) {
  if (cap <= capacity()) return;
  reserve_more(codes_.own(), (cap - capacity()) * codec_.row_bytes());
  if (keep_originals_) reserve_more(originals_.own(), (cap - capacity()) * dim_);
  reserve_more(level0_.own(), (cap - capacity()) * (1 + 2 * opts_.M));
  reserve_more(ids_.own(), cap - capacity());
  reserve_more(levels_, cap - capacity());
  reserve_more(upper_at_, cap - capacity());
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
  kept.reserve(upper_links_.size() - upper_garbage_);  // the only allocation: exactly the live blocks
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
  st = check_file();
  if (!st.ok()) return st;
  if (ids != nullptr) {
    Status id_check = check_new_ids(ids, n, slot_of_);
    if (!id_check.ok()) return id_check;
  }
  const Result<idx_t> next_id = next_id_after(next_id_, ids, n);
  if (!next_id.ok()) return next_id.error();
  const std::size_t reused = std::min(n, free_slots_.size());
  if (capacity() + (n - reused) > std::size_t(kNoSlot))
    return make_error(ErrorCode::out_of_range, "a graph index holds at most 2^32 - 1 vectors");

  // Prepare: everything that can fail happens here, before the index changes. Slots: those freed
  // by removals first (taken from the back of the free list), then appended ones.
  std::vector<std::uint32_t> slots(n);
  std::vector<std::uint8_t> levels(n);
  std::size_t fresh = capacity();
  for (std::size_t i = 0; i < n; ++i) {
    slots[i] = i < reused ? free_slots_[free_slots_.size() - 1 - i] : std::uint32_t(fresh++);
    levels[i] = std::uint8_t(random_level(slots[i]));
  }
  make_owned();
  reserve_slots(fresh);
  if (upper_garbage_ > upper_links_.size() / 2) compact_upper();  // moves live blocks only: no visible change
  std::size_t upper_words = 0;
  for (std::uint8_t l : levels) upper_words += std::size_t(l) * (1 + opts_.M);
  reserve_more(upper_links_, upper_words);
  slot_of_.reserve(live_ + n);
  const std::size_t first = entry_ == kNoSlot ? 1 : 0;  // the first node of an empty graph needs no links
  // Small tasks keep the workers balanced; each insertion locks only the nodes it links.
  constexpr std::size_t kPerTask = 16;
  const std::size_t todo = n - first, tasks = (todo + kPerTask - 1) / kPerTask;
  const int threads = resolve_threads(num_threads_.load());
  const std::size_t workers = threads > 1 && tasks > 1 ? std::min<std::size_t>(std::size_t(threads), tasks) : 1;
  while (build_scratch_.size() < workers) build_scratch_.push_back(std::make_unique<BuildScratch>());
  for (std::size_t w = 0; w < workers; ++w) build_scratch_[w]->reserve(*this, fresh);

  // Commit: nothing below allocates or fails.
  free_slots_.resize(free_slots_.size() - reused);
  grow(fresh);
  auto& codes = codes_.own();
  auto& originals = originals_.own();
  auto& id_vec = ids_.own();
  auto& level0 = level0_.own();
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t s = slots[i];
    std::memcpy(&codes[std::size_t(s) * rb], &encoded[i * rb], rb);
    if (keep_originals_) std::memcpy(&originals[std::size_t(s) * dim_], rows + i * dim_, dim_ * sizeof(float));
    const idx_t id = ids != nullptr ? ids[i] : next_id_ + idx_t(i);
    id_vec[s] = id;
    slot_of_.emplace(id, s);
    levels_[s] = levels[i];
    level0[std::size_t(s) * (1 + 2 * opts_.M)] = 0;
  }
  allocate_upper(slots);
  next_id_ = next_id.value();
  live_ += n;
  if (first == 1) {
    entry_ = slots[0];
    max_level_ = levels_[slots[0]];
  }
  // One worker needs no locks: nothing else touches the graph while the exclusive lock is held.
  const bool concurrent = workers > 1;
  std::atomic<std::size_t> next_task{0};
  parallel_for(workers, int(workers), [&](std::size_t w) {
    BuildScratch& scratch = *build_scratch_[w];
    for (std::size_t t = next_task.fetch_add(1); t < tasks; t = next_task.fetch_add(1)) {
      for (std::size_t i = first + t * kPerTask; i < std::min(n, first + (t + 1) * kPerTask); ++i) {
        if (concurrent)
          insert<true>(slots[i], levels_[slots[i]], scratch);
        else
          insert<false>(slots[i], levels_[slots[i]], scratch);
      }
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

void GraphIndex::BuildScratch::reserve(const GraphIndex& index, std::size_t capacity) {
  const std::size_t ef = index.opts_.ef_construction, links = 2 * index.opts_.M;
  walk.visited.reserve(capacity);
  walk.beam.reserve(ef);
  walk.entry.reserve(ef + 1);
  walk.found.reserve(ef + 1);
  if (index.opts_.metric != Metric::l2) walk.prepared.resize(index.row_kernels_->prepared_bytes(index.dim_));
  query.resize(index.dim_);
  row.resize(index.dim_);
  select.resize(index.dim_);
  cands.reserve(links + 1);
  chosen.reserve(links);
  kept.reserve(links);
}

template <bool locked>
void GraphIndex::insert(std::uint32_t slot, int level, BuildScratch& sc) {
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
  Status st = check_file();
  if (!st.ok()) return st;
  st = check_existing_ids(ids, n, slot_of_);
  if (!st.ok()) return st;
  // Prepare: everything that can fail happens before the first link changes.
  make_owned();
  std::vector<char> removed(capacity(), 0);
  for (std::size_t i = 0; i < n; ++i) removed[slot_of_.at(ids[i])] = 1;
  reserve_more(free_slots_, n);
  const std::size_t workers = std::min<std::size_t>(std::size_t(resolve_threads(num_threads_.load())), capacity());
  std::vector<RepairScratch> scratch(std::max<std::size_t>(workers, 1));
  for (RepairScratch& sc : scratch) sc.reserve(*this);

  // Commit: nothing below allocates or fails.
  repair(removed, scratch);
  auto& id_vec = ids_.own();
  auto& level0 = level0_.own();
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t s = slot_of_.at(ids[i]);
    slot_of_.erase(ids[i]);
    id_vec[s] = kNoId;
    level0[std::size_t(s) * (1 + 2 * opts_.M)] = 0;
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

void GraphIndex::RepairScratch::reserve(const GraphIndex& index) {
  // A node's candidates: its own links plus the links of each removed neighbour.
  const std::size_t links = 2 * index.opts_.M, most = links + links * links;
  row.resize(index.dim_);
  select.resize(index.dim_);
  cands.reserve(most);
  pool.reserve(most);
  kept.reserve(links);
}

void GraphIndex::repair(const std::vector<char>& removed, std::vector<RepairScratch>& scratch) {
  // Every surviving node that linked to a removed node re-selects its links among its surviving
  // links plus the removed node's surviving links (its two-hop neighbourhood through the hole).
  // Each node writes only its own links and reads only removed nodes' links, so nodes are
  // repaired in parallel without locks, each worker in its own (reserved) buffers.
  const std::size_t workers = scratch.size(), slots = capacity();
  const std::size_t chunk = (slots + workers - 1) / workers;
  for (int level = 0; level <= max_level_; ++level) {
    const std::size_t cap = max_links(level);
    parallel_for(workers, int(workers), [&](std::size_t w) {
      RepairScratch& sc = scratch[w];
      for (std::size_t u = w * chunk; u < std::min(slots, (w + 1) * chunk); ++u) {
        if (ids_[u] == kNoId || removed[u] || levels_[u] < level) continue;
        std::uint32_t* l = links_mut(std::uint32_t(u), level);
        bool touched = false;
        for (std::uint32_t i = 0; i < l[0] && !touched; ++i) touched = removed[l[1 + i]];
        if (!touched) continue;
        sc.pool.clear();
        for (std::uint32_t i = 0; i < l[0]; ++i) {
          const std::uint32_t v = l[1 + i];
          if (!removed[v]) {
            sc.pool.push_back(v);
            continue;
          }
          const std::uint32_t* lv = links(v, level);
          for (std::uint32_t j = 0; j < lv[0]; ++j)
            if (!removed[lv[1 + j]] && lv[1 + j] != u) sc.pool.push_back(lv[1 + j]);
        }
        std::sort(sc.pool.begin(), sc.pool.end());
        sc.pool.erase(std::unique(sc.pool.begin(), sc.pool.end()), sc.pool.end());
        decode_slot(std::uint32_t(u), sc.row.data());
        sc.cands.clear();
        for (std::uint32_t v : sc.pool) sc.cands.push_back({dist_to(sc.row.data(), v), v});
        select_neighbors(sc.cands, cap, sc.kept, sc.select);
        // Top up with the nearest pruned candidates up to the node's old degree: removals thin
        // the graph, and the extra links keep the hole's surroundings reachable.
        const std::size_t want = std::min<std::size_t>(cap, l[0]);
        for (const Candidate& c : sc.cands) {
          if (sc.kept.size() >= want) break;
          if (std::find(sc.kept.begin(), sc.kept.end(), c.slot) == sc.kept.end()) sc.kept.push_back(c.slot);
        }
        l[0] = std::uint32_t(sc.kept.size());
        std::copy(sc.kept.begin(), sc.kept.end(), l + 1);
      }
    });
  }
}

}  // namespace vsr

// GraphIndex: the graph walk (greedy descent, beam search on one layer), neighbour selection,
// filtered search strategy, exact re-rank, and the public search entry points.
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "vsr/graph_index.hpp"
#include "vsr/input_checks.hpp"
#include "vsr/parallel.hpp"
#include "vsr/topk.hpp"

namespace vsr {

namespace {

// Heap orders on Candidate::dist, as function objects so the heap operations inline them.
struct Farther {
  template <typename C>
  bool operator()(const C& a, const C& b) const noexcept {
    return a.dist < b.dist;
  }
};
struct Nearer {
  template <typename C>
  bool operator()(const C& a, const C& b) const noexcept {
    return a.dist > b.dist;
  }
};

}  // namespace

GraphIndex::WalkScratch& GraphIndex::search_scratch() {
  thread_local WalkScratch scratch;
  return scratch;
}

float GraphIndex::exact_score(const float* q, std::uint32_t slot) const noexcept {
  if (!keep_originals_) return -dist_to(q, slot);
  const float* x = originals_.data() + std::size_t(slot) * dim_;
  return opts_.metric == Metric::l2 ? -kernels_->l2sq_f32(q, x, dim_) : kernels_->dot_f32(q, x, dim_);
}

void GraphIndex::exact_scores(const float* q, const std::uint32_t* slots, std::size_t n, float* out) const noexcept {
  // Exact rows: the float32 originals of compressed storage, else the (float32) codes themselves.
  // They are cold (a walk reads the codes; a session's pool is from an earlier search): their
  // heads are requested together before the gather.
  const StorageKernels& f32 = kernels_->storage[std::size_t(Storage::f32)];
  const auto* base = keep_originals_ ? reinterpret_cast<const std::uint8_t*>(originals_.data()) : codes_.data();
  const std::size_t rb = dim_ * sizeof(float), head = row_head_bytes(rb);
  for (std::size_t i = 0; i < n; ++i) prefetch_bytes(base + std::size_t(slots[i]) * rb, head);
  if (opts_.metric != Metric::l2) {
    f32.dot_gather(q, base, slots, n, dim_, out);
    return;
  }
  f32.l2sq_gather(q, base, slots, n, dim_, out);
  for (std::size_t i = 0; i < n; ++i) out[i] = -out[i];
}

void GraphIndex::request_codes(const std::uint32_t* slots, std::size_t n) const noexcept {
  const std::uint8_t* codes = codes_.data();
  const std::size_t rb = codec_.row_bytes(), head = row_head_bytes(rb);
  for (std::size_t i = 0; i < n; ++i) prefetch_bytes(codes + std::size_t(slots[i]) * rb, head);
}

void GraphIndex::decode_slot(std::uint32_t slot, float* out) const noexcept {
  codec_.decode(codes_.data() + std::size_t(slot) * codec_.row_bytes(), out);
}

const float* GraphIndex::row_f32(std::uint32_t slot, float* buffer) const noexcept {
  if (opts_.storage == Storage::f32)
    return reinterpret_cast<const float*>(codes_.data() + std::size_t(slot) * codec_.row_bytes());
  decode_slot(slot, buffer);
  return buffer;
}

GraphIndex::WalkQuery GraphIndex::prepare_walk(const float* q, PreparedBuffer& buffer) const {
  if (opts_.metric == Metric::l2) return {q, nullptr};  // l2 gathers read the float32 query
  buffer.resize(row_kernels_->prepared_bytes(dim_));
  row_kernels_->prepare(q, dim_, buffer.data());
  return {q, buffer.data()};
}

void GraphIndex::score_slots(const WalkQuery& wq, const std::uint32_t* slots, std::size_t n, float* out) const noexcept {
  if (opts_.metric == Metric::l2) {
    row_kernels_->l2sq_gather(wq.q, codes_.data(), slots, n, dim_, out);
    return;
  }
  row_kernels_->dot_gather_prepared(wq.prepared, codes_.data(), slots, n, dim_, out);
  for (std::size_t i = 0; i < n; ++i) out[i] = -out[i];
}

template <bool locked>
std::uint32_t GraphIndex::greedy_descend(const WalkQuery& wq, std::uint32_t ep, float ep_dist, int from_level,
                                         int to_level, std::uint64_t& dcount) const {
  std::uint32_t nbs[256];  // upper layers hold at most M <= 256 links
  float dist[256];
  for (int level = from_level; level > to_level; --level) {
    bool moved = true;
    while (moved) {
      moved = false;
      const std::uint32_t* l = links(ep, level);
      std::uint32_t count;
      if (locked) {
        std::lock_guard lock(node_lock(ep));
        count = l[0];
        std::copy(l + 1, l + 1 + count, nbs);
      } else {
        count = l[0];
        std::copy(l + 1, l + 1 + count, nbs);
      }
      request_codes(nbs, count);
      score_slots(wq, nbs, count, dist);
      dcount += count;
      for (std::uint32_t i = 0; i < count; ++i)
        if (dist[i] < ep_dist) {
          ep_dist = dist[i];
          ep = nbs[i];
          moved = true;
        }
    }
  }
  return ep;
}

template <bool locked>
std::uint32_t GraphIndex::unvisited_neighbors(std::uint32_t slot, int level, Visited& visited,
                                              std::uint32_t* out) const noexcept {
  const std::uint32_t* l = links(slot, level);
  std::uint32_t count;
  const std::uint32_t* nbs = l + 1;  // read in place when nothing writes links concurrently
  if (locked) {
    std::lock_guard lock(node_lock(slot));
    count = l[0];
    std::copy(l + 1, l + 1 + count, out);
    nbs = out;  // compacted in place below: the write index never passes the read index
  } else {
    count = l[0];
  }
  // The neighbours' rows start loading together (memory-level parallelism; a visited one is
  // cached already). Branch-free: whether a neighbour was visited is a coin flip to the branch
  // predictor. Marks, epoch and codes stay in registers (stores to out could alias members).
  std::uint16_t* marks = visited.marks();
  const std::uint16_t epoch = visited.epoch();
  const std::uint8_t* codes = codes_.data();
  const std::size_t rb = codec_.row_bytes(), head = row_head_bytes(rb);
  std::uint32_t fresh = 0;
  for (std::uint32_t i = 0; i < count; ++i) {
    const std::uint32_t nb = nbs[i];
    const bool seen = marks[nb] == epoch;
    marks[nb] = epoch;
    out[fresh] = nb;
    fresh += !seen;
    prefetch_bytes(codes + std::size_t(nb) * rb, head);
  }
  return fresh;
}

template <bool locked>
void GraphIndex::search_layer(const WalkQuery& wq, const std::vector<Candidate>& entry, std::size_t ef, int level,
                              const IdFilter* filter, WalkScratch& ws, std::vector<Candidate>& out,
                              std::uint64_t& dcount) const {
  Visited& visited = ws.visited;
  visited.reset(capacity());
  if (filter == nullptr) {
    beam_search<locked>(wq, entry, ef, level, ws, out, dcount);
    return;
  }
  // Filtered: the results (accepted nodes only) and the frontier (every node, so that the walk
  // can pass through rejected ones) are two heaps.
  std::vector<Candidate>& cand = ws.frontier;  // min-heap: next to expand
  std::vector<Candidate>& top = out;           // max-heap: best ef accepted so far
  cand.clear();
  top.clear();
  auto push = [&](const Candidate& c) {
    cand.push_back(c);
    std::push_heap(cand.begin(), cand.end(), Nearer());
    if (!filter->accepts(ids_[c.slot])) return;
    top.push_back(c);
    std::push_heap(top.begin(), top.end(), Farther());
    if (top.size() > ef) {
      std::pop_heap(top.begin(), top.end(), Farther());
      top.pop_back();
    }
  };
  for (const Candidate& e : entry)
    if (!visited.check_and_mark(e.slot)) push(e);
  const std::size_t link_bytes = (1 + max_links(level)) * sizeof(std::uint32_t);
  std::uint32_t buf[2 * 256];
  float dist[2 * 256];
  while (!cand.empty()) {
    const Candidate c = cand.front();
    if (top.size() >= ef && c.dist > top.front().dist) break;
    std::pop_heap(cand.begin(), cand.end(), Nearer());
    cand.pop_back();
    // Link lists live apart from the rows: fetch the next candidate's while this one is expanded.
    if (!cand.empty()) prefetch_bytes(links(cand.front().slot, level), link_bytes);
    const std::uint32_t fresh = unvisited_neighbors<locked>(c.slot, level, visited, buf);
    if (fresh == 0) continue;
    score_slots(wq, buf, fresh, dist);
    dcount += fresh;
    for (std::uint32_t i = 0; i < fresh; ++i) {
      if (top.size() >= ef && dist[i] >= top.front().dist) continue;
      // A candidate is likely to be expanded: start fetching its links now, iterations ahead.
      prefetch_bytes(links(buf[i], level), link_bytes);
      push({dist[i], buf[i]});
    }
  }
  std::sort_heap(top.begin(), top.end(), Farther());  // ascending distance
}

template <bool locked>
void GraphIndex::beam_search(const WalkQuery& wq, const std::vector<Candidate>& entry, std::size_t ef, int level,
                             WalkScratch& ws, std::vector<Candidate>& out, std::uint64_t& dcount) const {
  Beam& beam = ws.beam;
  beam.reset(ef);
  for (const Candidate& e : entry)
    if (!ws.visited.check_and_mark(e.slot)) beam.push(e.dist, e.slot);
  const std::size_t link_bytes = (1 + max_links(level)) * sizeof(std::uint32_t);
  std::uint32_t buf[2 * 256];
  float dist[2 * 256];
  std::uint32_t slot;
  while (beam.next(slot)) {
    // Link lists live apart from the rows: fetch the next candidate's while this one is expanded.
    const std::uint32_t after = beam.peek();
    if (after != kNoSlot) prefetch_bytes(links(after, level), link_bytes);
    const std::uint32_t fresh = unvisited_neighbors<locked>(slot, level, ws.visited, buf);
    if (fresh == 0) continue;
    score_slots(wq, buf, fresh, dist);
    dcount += fresh;
    for (std::uint32_t i = 0; i < fresh; ++i)
      // A candidate is likely to be expanded: start fetching its links now, iterations ahead.
      if (beam.push(dist[i], buf[i])) prefetch_bytes(links(buf[i], level), link_bytes);
  }
  out.clear();
  for (const Beam::Entry& e : beam.items()) out.push_back({e.dist, e.slot});
}

// The build walks with locks when inserting in parallel and without them on one thread.
template std::uint32_t GraphIndex::greedy_descend<true>(const WalkQuery&, std::uint32_t, float, int, int,
                                                        std::uint64_t&) const;
template std::uint32_t GraphIndex::greedy_descend<false>(const WalkQuery&, std::uint32_t, float, int, int,
                                                         std::uint64_t&) const;
template void GraphIndex::search_layer<true>(const WalkQuery&, const std::vector<Candidate>&, std::size_t, int,
                                             const IdFilter*, WalkScratch&, std::vector<Candidate>&,
                                             std::uint64_t&) const;
template void GraphIndex::search_layer<false>(const WalkQuery&, const std::vector<Candidate>&, std::size_t, int,
                                              const IdFilter*, WalkScratch&, std::vector<Candidate>&,
                                              std::uint64_t&) const;

void GraphIndex::select_neighbors(std::vector<Candidate>& cands, std::size_t m, std::vector<std::uint32_t>& out,
                                  std::vector<float>& buffer) const {
  // HNSW heuristic: keep a candidate only if it is closer to the base than to every kept
  // neighbour, which spreads links over directions instead of one dense cluster.
  std::sort(cands.begin(), cands.end(), Farther());
  out.clear();
  buffer.resize(dim_);
  for (const Candidate& c : cands) {
    if (out.size() >= m) break;
    const float* v = buffer.data();
    if (!out.empty()) v = row_f32(c.slot, buffer.data());
    bool keep = true;
    for (std::uint32_t r : out)
      if (dist_to(v, r) < c.dist) {
        keep = false;
        break;
      }
    if (keep) out.push_back(c.slot);
  }
}

void GraphIndex::scan_rows(const float* q, const std::vector<std::uint32_t>& rows, std::size_t k, float* scores,
                           idx_t* ids, std::uint64_t& dcount) const {
  TopK top(k);
  for (std::uint32_t slot : rows) top.push(exact_score(q, slot), ids_[slot]);
  dcount += rows.size();
  top.write_sorted(scores, ids, -TopK::kInf);
}

void GraphIndex::search_one(WalkScratch& ws, const float* q, std::size_t k, const std::uint32_t* seeds, std::size_t n_seeds,
                            const IdFilter* filter, float* scores, idx_t* ids, std::uint64_t& dcount) const {
  const std::size_t n = live_;
  std::size_t ef = std::max(n_seeds > 0 ? warm_ef() : ef_search_.load(), k);
  if (filter != nullptr) {
    // Restrictive filters: a scan of the allowed rows is both exact and cheaper than a walk that
    // must pass ef / selectivity nodes. Cost model: walk ~ ef * 2M / s, scan ~ s * n.
    std::size_t allowed = 0;
    if (filter->mode == IdFilter::Mode::allow) {
      for (idx_t id : filter->ids) allowed += slot_of_.count(id);
    } else {
      std::size_t denied = 0;
      for (idx_t id : filter->ids) denied += slot_of_.count(id);
      allowed = n - denied;
    }
    const double walk_nodes = double(ef) * double(2 * opts_.M) * double(n) / double(std::max<std::size_t>(allowed, 1));
    if (allowed == 0 || double(allowed) <= walk_nodes) {
      std::vector<std::uint32_t> rows;
      rows.reserve(allowed);
      if (filter->mode == IdFilter::Mode::allow) {
        for (idx_t id : filter->ids) {
          auto it = slot_of_.find(id);
          if (it != slot_of_.end()) rows.push_back(it->second);
        }
      } else {
        for (std::uint32_t s = 0; s < capacity(); ++s)
          if (ids_[s] != kNoId && filter->accepts(ids_[s])) rows.push_back(s);
      }
      scan_rows(q, rows, k, scores, ids, dcount);
      return;
    }
    ef = std::min(n, std::size_t(std::ceil(double(ef) * double(n) / double(allowed))));
  }
  const WalkQuery wq = prepare_walk(q, ws.prepared);
  std::vector<Candidate>& entry = ws.entry;
  entry.clear();
  if (n_seeds > 0) {
    // Seeds are scored like a walk's neighbours: rows requested together, one gather call.
    request_codes(seeds, n_seeds);
    ws.scores.resize(n_seeds);
    score_slots(wq, seeds, n_seeds, ws.scores.data());
    for (std::size_t i = 0; i < n_seeds; ++i) entry.push_back({ws.scores[i], seeds[i]});
    dcount += n_seeds;
  } else {
    float d = dist_to(q, entry_);
    ++dcount;
    std::uint32_t ep = greedy_descend<false>(wq, entry_, d, max_level_, 0, dcount);
    entry.push_back({ep == entry_ ? d : dist_to(q, ep), ep});
    dcount += ep != entry_;
  }
  std::vector<Candidate>& found = ws.found;
  search_layer<false>(wq, entry, ef, 0, filter, ws, found, dcount);
  TopK top(k);
  if (keep_originals_) {
    ws.slots.resize(found.size());
    ws.scores.resize(found.size());
    for (std::size_t i = 0; i < found.size(); ++i) ws.slots[i] = found[i].slot;
    exact_scores(q, ws.slots.data(), found.size(), ws.scores.data());
    for (std::size_t i = 0; i < found.size(); ++i) top.push(ws.scores[i], ids_[ws.slots[i]]);
    dcount += found.size();
  } else {
    for (const Candidate& c : found) top.push(-c.dist, ids_[c.slot]);
  }
  top.write_sorted(scores, ids, -TopK::kInf);
}

namespace {
// The filter a search applies: none for a missing filter or one in mode none.
const IdFilter* active_filter(const SearchParams& params) noexcept {
  return params.filter != nullptr && params.filter->mode != IdFilter::Mode::none ? params.filter : nullptr;
}

// n missing results: id kNoId, the worst score of the metric.
void fill_missing(Metric m, float* scores, idx_t* ids, std::size_t n) noexcept {
  for (std::size_t j = 0; j < n; ++j) {
    scores[j] = m == Metric::l2 ? TopK::kInf : -TopK::kInf;
    ids[j] = kNoId;
  }
}

// Results in metric units: l2 reports distances (best = smallest), +inf for empty slots.
void to_metric_units(Metric m, float* scores, std::size_t n) noexcept {
  if (m == Metric::l2)
    for (std::size_t j = 0; j < n; ++j) scores[j] = -scores[j];
}
}  // namespace

Status GraphIndex::search(const float* queries, std::size_t nq, std::size_t k, float* scores, idx_t* ids,
                          const SearchParams& params) const {
  if (nq == 0) return {};
  Status st = check_search_args(k, scores, ids);
  if (!st.ok()) return st;
  std::vector<float> qstore;
  Result<const float*> prepared = prepare_rows(queries, nq, dim_, opts_.metric, "query", qstore);
  if (!prepared.ok()) return prepared.error();
  const float* q = prepared.value();
  std::shared_lock lock(mutex_);
  st = check_file();
  if (!st.ok()) return st;
  if (!params.pad) st = check_k_fits(k, live_);
  if (!st.ok()) return st;
  if (live_ == 0) {  // only with pad: nothing to walk
    fill_missing(opts_.metric, scores, ids, nq * k);
    return {};
  }
  const IdFilter* filter = active_filter(params);
  const int threads = resolve_threads(params.num_threads, num_threads_.load());
  parallel_for_chunks(nq, threads, [&](std::size_t qb, std::size_t qe) {
    std::uint64_t dcount = 0;
    WalkScratch& ws = search_scratch();
    for (std::size_t i = qb; i < qe; ++i) {
      search_one(ws, q + i * dim_, k, nullptr, 0, filter, scores + i * k, ids + i * k, dcount);
      to_metric_units(opts_.metric, scores + i * k, k);
    }
    if (params.stats != nullptr) params.stats->distances.fetch_add(dcount, std::memory_order_relaxed);
  });
  return {};
}

Status GraphIndex::range_search(const float* queries, std::size_t nq, float radius, RangeResult* out,
                                const SearchParams& params) const {
  Status st = check_range_args(radius, out);
  if (!st.ok()) return st;
  std::vector<float> qstore;
  Result<const float*> prepared = prepare_rows(queries, nq, dim_, opts_.metric, "query", qstore);
  if (!prepared.ok()) return prepared.error();
  const float* q = prepared.value();
  std::shared_lock lock(mutex_);
  st = check_file();
  if (!st.ok()) return st;
  const IdFilter* filter = active_filter(params);
  const int threads = resolve_threads(params.num_threads, num_threads_.load());
  std::vector<std::vector<std::pair<float, idx_t>>> hits(nq);
  // A k-NN walk per query with k doubling while its k-th result is still inside the radius: the
  // beam (ef >= k) widens with the ball, so the answer is as approximate as a k-NN search of the
  // ball's size. Scores are exact (re-ranked), in "higher is better" form until written out.
  const float key_radius = opts_.metric == Metric::l2 ? -radius : radius;
  parallel_for_chunks(nq, threads, [&](std::size_t qb, std::size_t qe) {
    std::uint64_t dcount = 0;
    WalkScratch& ws = search_scratch();
    std::vector<float> scores;
    std::vector<idx_t> ids;
    for (std::size_t i = qb; i < qe; ++i) {
      std::size_t k = std::min(live_, std::max<std::size_t>(16, ef_search_.load() / 2));
      while (k > 0) {
        scores.resize(k);
        ids.resize(k);
        search_one(ws, q + i * dim_, k, nullptr, 0, filter, scores.data(), ids.data(), dcount);
        if (k == live_ || ids[k - 1] == kNoId || scores[k - 1] < key_radius) break;
        k = std::min(live_, 2 * k);
      }
      for (std::size_t j = 0; j < k && ids[j] != kNoId && scores[j] >= key_radius; ++j)
        hits[i].emplace_back(scores[j], ids[j]);
    }
    if (params.stats != nullptr) params.stats->distances.fetch_add(dcount, std::memory_order_relaxed);
  });
  write_range_result(opts_.metric, hits, out);
  return {};
}

Status GraphIndex::search_warm(const float* query, std::size_t k, const idx_t* seeds, std::size_t n_seeds,
                               float* scores, idx_t* ids, const SearchParams& params) const {
  Status st = check_search_args(k, scores, ids);
  if (!st.ok()) return st;
  if (n_seeds == 0 || seeds == nullptr) return search(query, 1, k, scores, ids, params);
  std::vector<float> qstore;
  Result<const float*> prepared = prepare_rows(query, 1, dim_, opts_.metric, "query", qstore);
  if (!prepared.ok()) return prepared.error();
  const float* q = prepared.value();
  std::shared_lock lock(mutex_);
  st = check_file();
  if (!st.ok()) return st;
  if (!params.pad) st = check_k_fits(k, live_);
  if (!st.ok()) return st;
  if (live_ == 0) {
    fill_missing(opts_.metric, scores, ids, k);
    return {};
  }
  // The best seeds are enough to start from: more would only add distance computations. Seeds
  // are hints: those no longer in the index (removed since they were found) are skipped, and a
  // walk with none left starts from the entry point.
  const std::size_t use = std::min(n_seeds, std::max(k, warm_ef()));
  std::vector<std::uint32_t> slots;
  slots.reserve(use);
  for (std::size_t i = 0; i < n_seeds && slots.size() < use; ++i) {
    auto it = slot_of_.find(seeds[i]);
    if (it != slot_of_.end()) slots.push_back(it->second);
  }
  const IdFilter* filter = active_filter(params);
  std::uint64_t dcount = 0;
  search_one(search_scratch(), q, k, slots.data(), slots.size(), filter, scores, ids, dcount);
  to_metric_units(opts_.metric, scores, k);
  if (params.stats != nullptr) params.stats->distances.fetch_add(dcount, std::memory_order_relaxed);
  return {};
}

Status GraphIndex::score_ids(const float* query, const idx_t* ids, std::size_t n, float* scores) const {
  std::vector<float> qstore;
  Result<const float*> prepared = prepare_rows(query, 1, dim_, opts_.metric, "query", qstore);
  if (!prepared.ok()) return prepared.error();
  return score_ids_prepared(prepared.value(), ids, n, scores);
}

Status GraphIndex::score_ids_prepared(const float* q, const idx_t* ids, std::size_t n, float* scores) const {
  std::shared_lock lock(mutex_);
  Status st = check_file();
  if (!st.ok()) return st;
  std::vector<std::uint32_t>& slots = search_scratch().slots;
  slots.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    auto it = slot_of_.find(ids[i]);
    if (it == slot_of_.end())
      return make_error(ErrorCode::not_found, "id " + std::to_string(ids[i]) + " is not in the index");
    slots[i] = it->second;
  }
  exact_scores(q, slots.data(), n, scores);
  to_metric_units(opts_.metric, scores, n);
  return {};
}

}  // namespace vsr

#include "vsr/session.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "vsr/input_checks.hpp"
#include "vsr/topk.hpp"

namespace vsr {

std::string_view turn_path_name(TurnPath p) noexcept {
  switch (p) {
    case TurnPath::search: return "search";
    case TurnPath::pool: return "pool";
    case TurnPath::warm: return "warm";
    case TurnPath::cold: return "cold";
  }
  return "unknown";
}

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kUnitRoundoff = 1.0 / (1 << 24);  // float32

// How far a query moved from a pool's anchor, measured once per turn in one pass (in double: the
// bound below must stay valid for tiny moves).
struct QueryMove {
  bool valid = false;        // the pool has an anchor
  double distance = 0;       // ||q - anchor||
  double query_norm = 0, anchor_norm = 0;
  double cosine = 0;         // of the angle between q and the anchor (0 when either is zero)
  double unit_distance = 1;  // ||q / |q| - anchor / |anchor||| = 2 sin(angle / 2)
};

QueryMove measure_move(const std::vector<float>& q, const std::vector<float>& anchor) noexcept {
  QueryMove m;
  if (anchor.empty()) return m;
  m.valid = true;
  double qq = 0, aa = 0, qa = 0, dd = 0;
  for (std::size_t i = 0; i < q.size(); ++i) {
    const double x = q[i], y = anchor[i];
    qq += x * x;
    aa += y * y;
    qa += x * y;
    dd += (x - y) * (x - y);
  }
  m.distance = std::sqrt(dd);
  m.query_norm = std::sqrt(qq);
  m.anchor_norm = std::sqrt(aa);
  if (qq > 0 && aa > 0) {
    const double nq = m.query_norm, na = m.anchor_norm;
    m.cosine = std::clamp(qa / (nq * na), -1.0, 1.0);
    // ||q^ - a^||^2 = (||q - a||^2 - (|q| - |a|)^2) / (|q| |a|): no cancellation for tiny moves,
    // where 2 - 2 cos would lose every digit.
    m.unit_distance = std::sqrt(std::clamp((dd - (nq - na) * (nq - na)) / (nq * na), 0.0, 4.0));
  }
  return m;
}

// Copies a query, checking it and normalising it for cosine, so the distance a query moved is
// measured in the space the index scores in.
Status prepare_query(const Index& index, const float* q, std::vector<float>& out) {
  const std::size_t d = index.dim();
  Result<const float*> prepared = prepare_rows(q, 1, d, index.metric(), "query", out);
  if (!prepared.ok()) return prepared.error();
  // Non-cosine metrics score the input as it is; the session keeps its own copy.
  if (prepared.value() != out.data()) out.assign(q, q + d);
  return {};
}

std::size_t resolve_pool_size(std::size_t requested, std::size_t k) noexcept {
  std::size_t p = requested ? requested : std::max<std::size_t>(64, 8 * k);
  return std::max(p, k);
}

// "Higher is better" key of a score in the metric's units.
float key_of(Metric m, float score) noexcept { return higher_is_better(m) ? score : -score; }
float missing_score(Metric m) noexcept { return higher_is_better(m) ? -TopK::kInf : TopK::kInf; }

// Search settings that count the distances computed into stats.
SearchParams counted_params(const IdFilter* filter, int threads, SearchStats& stats) noexcept {
  SearchParams params;
  params.filter = filter;
  params.num_threads = threads;
  params.stats = &stats;
  return params;
}

// Searches from scratch for a fresh pool anchored at q.
Status search_pool(const Index& index, const std::vector<float>& q, std::size_t pool_size, const IdFilter* filter,
                   int threads, CandidatePool& pool, std::uint64_t& distances) {
  // Read before anything else: a concurrent change then shows up as a stale pool, never a missed
  // one (and `everything` below only matters while the generation is still this one).
  const std::uint64_t generation = index.generation();
  // A pool of every vector needs no bound. The search pads rather than fail when another thread
  // removed vectors since size() was read.
  const std::size_t n = index.size();
  const bool everything = pool_size >= n;
  pool_size = std::max<std::size_t>(1, std::min(pool_size, n));
  std::vector<float> scores(pool_size);
  std::vector<idx_t> ids(pool_size);
  SearchStats stats;
  SearchParams params = counted_params(filter, threads, stats);
  params.pad = true;
  Status s = index.search(q.data(), 1, pool_size, scores.data(), ids.data(), params);
  distances += stats.distances.load();
  if (!s.ok()) return s;
  std::size_t found = 0;
  while (found < pool_size && ids[found] != kNoId) ++found;
  pool.anchor = q;
  pool.ids.assign(ids.begin(), ids.begin() + found);
  pool.scores.assign(scores.begin(), scores.begin() + found);
  pool.floor = found ? scores[found - 1] : missing_score(index.metric());
  pool.exact = index.exact_search();
  pool.complete = pool.exact && (found < pool_size || everything);
  pool.generation = generation;
  return {};
}

// The pool's best k as results (the pool is sorted best first); missing slots get kNoId.
void write_prefix(const CandidatePool& pool, std::size_t k, Metric metric, float* scores, idx_t* ids) noexcept {
  std::size_t j = 0;
  for (; j < k && j < pool.ids.size(); ++j) {
    scores[j] = pool.scores[j];
    ids[j] = pool.ids[j];
  }
  for (; j < k; ++j) {
    scores[j] = missing_score(metric);
    ids[j] = kNoId;
  }
}

// The best score (as a "higher is better" key) the new query q can give any vector whose score
// for the pool's anchor is at most a given anchor score. Monotone in the anchor score, so one
// bound covers every vector outside the pool (anchor score <= the pool's floor) and every pool
// entry below a given one.
//
//   inner product / cosine: write x = a q^ + x_perp (q^ the unit anchor, a = <q^,x>) and
//     q'^ = c q^ + s e with e a unit vector orthogonal to q^; with ||x|| <= r,
//     <q'^,x> = c a + s <e,x_perp> <= c a + s sqrt(r^2 - a^2), which grows with a up to a = c r:
//     the bound is that expression at min(a, c r), times ||q'||. It is the exact supremum, and
//     never looser than the Cauchy-Schwarz form a + ||q'-q|| r.
//   l2: ||q'-x|| >= ||q-x|| - ||q'-q|| (triangle inequality).
//
// `eps` covers the rounding of float32 scores (worst-case error of a d-term dot product).
class MoveBound {
 public:
  MoveBound(const Index& index, const QueryMove& move) : metric_(index.metric()), moved_(move.distance) {
    const std::size_t d = index.dim();
    gamma_ = (d + 2) * kUnitRoundoff / (1 - (d + 2) * kUnitRoundoff);
    if (metric_ == Metric::l2) return;
    if (metric_ == Metric::inner_product) {
      auto mn = index.max_norm();
      valid_ = mn.has_value();
      r_ = mn.value_or(0.f);
    }
    anchor_norm_ = move.anchor_norm;
    query_norm_ = move.query_norm;
    const bool both = anchor_norm_ > 0 && query_norm_ > 0;
    cos_ = both ? move.cosine : 0.0;
    const double u = move.unit_distance;  // sin from the distance between the unit vectors
    sin_ = both ? std::min(1.0, u * std::sqrt(std::max(0.0, 1 - u * u / 4))) : 1.0;
    eps_ = 2 * gamma_ * r_ * (query_norm_ + anchor_norm_) + 1e-6 * r_ * query_norm_;
  }

  bool valid() const noexcept { return valid_; }

  // Upper bound on key(q', x) over vectors x with anchor score <= anchor_score (metric units).
  double key_bound(float anchor_score) const noexcept {
    if (metric_ == Metric::l2) {
      const double lower = std::max(0.0, std::sqrt(std::max(0.0, double(anchor_score))) - moved_);
      return -lower * lower;
    }
    if (anchor_norm_ == 0) return query_norm_ * r_;  // every vector scores 0 for a zero anchor
    const double a = std::clamp(double(anchor_score) / anchor_norm_, -double(r_), cos_ * r_);
    return query_norm_ * (cos_ * a + sin_ * std::sqrt(std::max(0.0, double(r_) * r_ - a * a)));
  }

  // Proof slack: kth (the k-th best key among scored vectors) minus the bound, less rounding.
  double margin(float kth_key, float anchor_score) const noexcept {
    const double b = key_bound(anchor_score);
    if (metric_ == Metric::l2) {
      const double kth_d = std::sqrt(std::max(0.0, -double(kth_key))), lower = std::sqrt(-b);
      const double eps = 2 * gamma_ * (kth_d + lower + moved_) * (kth_d + lower + moved_) + 1e-30;
      return double(kth_key) - b - eps;
    }
    return double(kth_key) - b - eps_;
  }

 private:
  Metric metric_;
  double moved_;
  double gamma_ = 0;
  bool valid_ = true;
  float r_ = 1.0f;  // max vector norm (cosine: unit vectors)
  double anchor_norm_ = 0, query_norm_ = 0, cos_ = 1, sin_ = 0, eps_ = 0;
};

// Whether q is close enough to the pool's anchor for the pool to help (bound or warm start).
bool close_to_anchor(const QueryMove& move, double min_cosine) noexcept {
  return move.valid && move.cosine >= min_cosine;
}

// Exact scores of the new query for pool entries [begin, end) (written to out[begin, end)); adds
// the distances it computed.
using PoolScorer = std::function<Status(std::size_t begin, std::size_t end, float* out, std::uint64_t& distances)>;

// Re-scores the pool best-first for its anchor, stopping as soon as the bound shows that no
// entry left (and no vector outside the pool) can beat the k-th best eligible score so far: the
// scored entries' top-k is then the answer. Once max(64, 4k) entries are scored, a k-th score
// still below the bound of the vectors outside the pool rarely climbs above it (the best entries
// for a nearby query sit at the pool's head), so the scan gives up and leaves the query to a
// search: that caps the cost of a failed proof. Returns whether it proved the answer and, in
// `scored`, how many leading entries of pool_scores hold scores. Leaves the slack in info.margin.
Status scan_pool(const Index& index, const CandidatePool& pool, const QueryMove& move, const PoolScorer& scorer,
                 std::size_t k, const IdFilter* filter, std::vector<float>& pool_scores, TopK& top, TurnInfo& info,
                 bool& proven, std::size_t& scored) {
  const Metric metric = index.metric();
  const MoveBound bound(index, move);
  const std::size_t p = pool.ids.size();
  pool_scores.resize(p);
  proven = false;
  if (!bound.valid()) info.margin = kNaN;
  // Blocks amortise the per-call cost of scoring; the first holds k entries (k results are
  // needed before anything can be proven).
  const std::size_t block = std::max<std::size_t>(16, k);
  const std::size_t give_up_after = std::max<std::size_t>(64, 4 * k);
  scored = 0;
  while (scored < p) {
    if (bound.valid() && top.full()) {
      const float kth = top.threshold();
      const double margin = bound.margin(kth, pool.scores[scored]);
      if (margin >= 0) {
        info.margin = margin;
        proven = true;
        return {};
      }
      if (!pool.complete && scored >= give_up_after) {
        info.margin = bound.margin(kth, pool.floor);
        if (info.margin < 0) return {};
      }
    }
    const std::size_t end = std::min(p, scored + (scored == 0 ? std::max(k, block) : block));
    Status s = scorer(scored, end, pool_scores.data(), info.distances);
    if (!s.ok()) return s;
    for (std::size_t j = scored; j < end; ++j)
      if (!filter || filter->accepts(pool.ids[j])) top.push(key_of(metric, pool_scores[j]), pool.ids[j]);
    scored = end;
  }
  // Every entry is scored: the pool answers when nothing outside it can compete.
  if (pool.complete) {
    info.margin = std::numeric_limits<double>::infinity();
    proven = true;
  } else if (!bound.valid()) {
    info.margin = kNaN;
  } else if (!top.full()) {
    info.margin = -std::numeric_limits<double>::infinity();
  } else {
    info.margin = bound.margin(top.threshold(), pool.floor);
    proven = info.margin >= 0;
  }
  return {};
}

// Answers one query from `pool` (scorer == nullptr: the pool is stale or too far, not scored).
// Takes the pool's top-k when the bound proves it, else starts a search from the pool's best
// candidates (indexes with warm starts), else searches from scratch and, when new_pool != nullptr,
// leaves that search's fresh pool there. With cold_deferred != nullptr a from-scratch search for k
// results is not run but left to the caller (*cold_deferred = true), who batches several.
Status answer_query(const Index& index, const CandidatePool& pool, const std::vector<float>& q, const QueryMove& move,
                    const PoolScorer* scorer, std::size_t k, std::size_t pool_size, const IdFilter* filter,
                    double warm_min_cosine, int threads, float* out_scores, idx_t* out_ids, TurnInfo& info,
                    CandidatePool* new_pool, bool* cold_deferred = nullptr) {
  const Metric metric = index.metric();
  info.moved = move.distance;
  info.margin = kNaN;
  TopK top(k);
  std::vector<float> pool_scores;
  std::size_t scored = 0;
  if (scorer != nullptr) {
    bool proven = false;
    Status s = scan_pool(index, pool, move, *scorer, k, filter, pool_scores, top, info, proven, scored);
    if (index.generation() != pool.generation) {
      // Another thread's write since the pool was searched (a new generation; a pool id that is
      // gone makes the scoring fail) leaves scores and bound describing no one state of the
      // index: the query is answered as for a pool that was stale from the start.
      scorer = nullptr;
      scored = 0;
      info.margin = kNaN;
    } else if (!s.ok()) {
      return s;
    } else if (proven) {
      top.write_sorted(out_scores, out_ids, -TopK::kInf);
      if (!higher_is_better(metric))
        for (std::size_t j = 0; j < k; ++j) out_scores[j] = -out_scores[j];
      info.path = TurnPath::pool;
      info.exact = pool.exact;
      info.pool_size = pool.ids.size();
      return {};
    }
  }
  // Seeds for a warm start: the scored pool entries re-ranked for the new query, best first.
  std::vector<idx_t> seeds;
  if (scorer != nullptr && close_to_anchor(move, warm_min_cosine) && scored > 0) {
    std::vector<std::size_t> order(scored);
    for (std::size_t j = 0; j < order.size(); ++j) order[j] = j;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return key_of(metric, pool_scores[a]) > key_of(metric, pool_scores[b]);
    });
    seeds.reserve(order.size());
    for (std::size_t j : order) seeds.push_back(pool.ids[j]);
  }
  // A warm start walks the graph from the pool's best candidates for the new query with the
  // index's usual beam (the search knob that sets its recall), for k results only: the pool keeps
  // its anchor, so later refines of the same original query still start from it.
  if (!seeds.empty()) {
    SearchStats stats;
    const SearchParams params = counted_params(filter, threads, stats);
    Status s = index.search_warm(q.data(), k, seeds.data(), seeds.size(), out_scores, out_ids, params);
    info.distances += stats.distances.load();
    if (s.ok()) {
      info.path = TurnPath::warm;
      info.exact = false;
      info.pool_size = pool.ids.size();
      return {};
    }
    if (s.error().code != ErrorCode::unsupported) return s;
  }
  // A cold search refills the pool (a new anchor) only when the pool could not be used at all
  // (stale, or the query moved beyond warm_min_cosine) and the caller keeps one; a query whose
  // proof merely failed is searched for k results and the pool keeps its anchor.
  const bool refill = scorer == nullptr && new_pool != nullptr;
  info.path = TurnPath::cold;
  if (cold_deferred != nullptr && !refill) {
    *cold_deferred = true;
    info.exact = index.exact_search();
    info.pool_size = pool.ids.size();
    return {};
  }
  CandidatePool fresh;
  std::uint64_t distances = 0;
  Status s = search_pool(index, q, refill ? pool_size : k, filter, threads, fresh, distances);
  if (!s.ok()) return s;
  info.distances += distances;
  info.exact = fresh.exact;
  info.pool_size = refill ? fresh.ids.size() : pool.ids.size();
  write_prefix(fresh, k, metric, out_scores, out_ids);
  if (refill) *new_pool = std::move(fresh);
  return {};
}

}  // namespace

Session::Session(const Index& index, SessionOptions options)
    : index_(index), dim_(index.dim()), options_(std::move(options)) {}

Result<std::unique_ptr<Session>> Session::start(const Index& index, const float* query, std::size_t k,
                                                SessionOptions options) {
  if (k == 0) return make_error(ErrorCode::invalid_argument, "k must be positive");
  if (!(options.warm_min_cosine >= -1 && options.warm_min_cosine <= 1))
    return make_error(ErrorCode::invalid_argument, "warm_min_cosine must be in [-1, 1]");
  if (options.num_threads < 0)
    return make_error(ErrorCode::invalid_argument,
                      "num_threads must be >= 0 (0: all cores), got " + std::to_string(options.num_threads));
  std::unique_ptr<Session> s(new Session(index, std::move(options)));
  s->effective_filter_ = s->options_.filter;
  Status st = s->run_turn(query, k, true);
  if (!st.ok()) return st.error();
  return s;
}

std::vector<idx_t> Session::seen() const {
  std::lock_guard lock(mutex_);
  return seen_order_;
}

Status Session::refine(const float* query, std::size_t k, float* scores, idx_t* ids, TurnInfo* info) {
  if (k == 0) return make_error(ErrorCode::invalid_argument, "k must be positive");
  if (scores == nullptr || ids == nullptr) return make_error(ErrorCode::invalid_argument, "output buffers are null");
  std::lock_guard lock(mutex_);
  Status s = run_turn(query, k, false);
  if (!s.ok()) return s;
  std::copy(scores_.begin(), scores_.end(), scores);
  std::copy(ids_.begin(), ids_.end(), ids);
  if (info) *info = info_;
  return {};
}

Status Session::exclude(const idx_t* ids, std::size_t n) {
  if (n == 0) return {};
  if (ids == nullptr) return make_error(ErrorCode::invalid_argument, "ids is null");
  for (std::size_t i = 0; i < n; ++i)
    if (ids[i] < 0)
      return make_error(ErrorCode::invalid_argument, "ids must be non-negative, got " + std::to_string(ids[i]));
  std::lock_guard lock(mutex_);
  for (std::size_t i = 0; i < n; ++i) mark_seen(ids[i], true);
  return {};
}

void Session::mark_seen(idx_t id, bool exclude) {
  if (std::find(seen_order_.begin(), seen_order_.end(), id) == seen_order_.end()) seen_order_.push_back(id);
  if (!exclude) return;
  // An allow-list shrinks; otherwise the id joins the deny-list (an unfiltered session starts one).
  if (effective_filter_.mode == IdFilter::Mode::allow) {
    effective_filter_.ids.erase(id);
  } else {
    effective_filter_.mode = IdFilter::Mode::deny;
    effective_filter_.ids.insert(id);
  }
}

Status Session::run_turn(const float* query, std::size_t k, bool first) {
  // As for search: k larger than the index is an error (with a filter, missing results are
  // padded). Vectors removed by another thread during the turn pad too, rather than fail.
  Status s = check_k_fits(k, index_.size());
  if (!s.ok()) return s;
  std::vector<float> q;
  s = prepare_query(index_, query, q);
  if (!s.ok()) return s;
  const std::size_t pool_size = resolve_pool_size(options_.pool_size, k);
  const IdFilter* filter = effective_filter_.mode == IdFilter::Mode::none ? nullptr : &effective_filter_;
  std::vector<float> out_scores(k);
  std::vector<idx_t> out_ids(k);
  TurnInfo info;
  if (first) {
    CandidatePool fresh;
    s = search_pool(index_, q, pool_size, filter, options_.num_threads, fresh, info.distances);
    if (!s.ok()) return s;
    pool_ = std::move(fresh);
    info.path = TurnPath::search;
    info.exact = pool_.exact;
    info.margin = kNaN;
    info.pool_size = pool_.ids.size();
    write_prefix(pool_, k, index_.metric(), out_scores.data(), out_ids.data());
  } else {
    // The pool is only valid for the index contents it was searched over.
    // A stale pool, or a query that moved too far for the pool to help, goes straight to a cold
    // search without scoring the pool.
    const QueryMove move = measure_move(q, pool_.anchor);
    bool skip = pool_.generation != index_.generation() || !close_to_anchor(move, options_.warm_min_cosine);
    const PoolScorer scorer = [&](std::size_t b, std::size_t e, float* out, std::uint64_t& distances) {
      distances += e - b;
      return index_.score_ids_prepared(q.data(), pool_.ids.data() + b, e - b, out + b);
    };
    CandidatePool fresh;
    s = answer_query(index_, pool_, q, move, skip ? nullptr : &scorer, k, pool_size, filter, options_.warm_min_cosine,
                     options_.num_threads, out_scores.data(), out_ids.data(), info, &fresh);
    if (!s.ok()) return s;
    if (!fresh.anchor.empty()) pool_ = std::move(fresh);  // refilled by a cold search
  }
  for (idx_t id : out_ids)
    if (id != kNoId) mark_seen(id, options_.exclude_seen);
  scores_ = std::move(out_scores);
  ids_ = std::move(out_ids);
  info_ = info;
  ++turns_;
  return {};
}

namespace {

// The cold searches of a group in one call (one pass over a flat index serves them all), for k
// results each; the batch's distances are shared evenly among its queries.
Status search_together(const Index& index, const float* queries, const std::vector<std::size_t>& which,
                       std::size_t k, const GroupOptions& options, float* scores, idx_t* ids,
                       std::vector<TurnInfo>& turn) {
  const std::size_t d = index.dim(), m = which.size();
  std::vector<float> batch(m * d), found_scores(m * k);
  std::vector<idx_t> found_ids(m * k);
  for (std::size_t j = 0; j < m; ++j) std::copy_n(queries + which[j] * d, d, batch.begin() + j * d);
  SearchStats stats;
  SearchParams params = counted_params(options.filter, options.num_threads, stats);
  params.pad = true;  // vectors removed meanwhile by another thread leave missing results, not an error
  Status s = index.search(batch.data(), m, k, found_scores.data(), found_ids.data(), params);
  if (!s.ok()) return s;
  const std::uint64_t each = stats.distances.load() / m;
  for (std::size_t j = 0; j < m; ++j) {
    const std::size_t i = which[j];
    std::copy_n(found_scores.begin() + j * k, k, scores + i * k);
    std::copy_n(found_ids.begin() + j * k, k, ids + i * k);
    turn[i].distances += each;
    turn[i].path = TurnPath::cold;
    turn[i].exact = index.exact_search();
  }
  return {};
}

}  // namespace

Status refine_group(const Index& index, const float* original, const float* refined, std::size_t nq,
                    std::size_t k, const GroupOptions& options, float* scores, idx_t* ids, TurnInfo* infos,
                    std::uint64_t* shared_distances) {
  if (k == 0) return make_error(ErrorCode::invalid_argument, "k must be positive");
  if (options.num_threads < 0)
    return make_error(ErrorCode::invalid_argument,
                      "num_threads must be >= 0 (0: all cores), got " + std::to_string(options.num_threads));
  if (nq == 0) return {};
  if (refined == nullptr) return make_error(ErrorCode::invalid_argument, "refined queries are null");
  if (scores == nullptr || ids == nullptr) return make_error(ErrorCode::invalid_argument, "output buffers are null");
  Status s = check_k_fits(k, index.size());
  if (!s.ok()) return s;
  const std::size_t d = index.dim();
  const std::size_t pool_size = resolve_pool_size(options.pool_size, k);
  std::vector<float> q0;
  s = prepare_query(index, original, q0);
  if (!s.ok()) return s;
  std::vector<std::vector<float>> qs(nq);
  for (std::size_t i = 0; i < nq; ++i) {
    s = prepare_query(index, refined + i * d, qs[i]);
    if (!s.ok()) return make_error(s.error().code, "refined query " + std::to_string(i) + ": " + s.error().message);
  }
  std::vector<float> all(nq * d);
  for (std::size_t i = 0; i < nq; ++i) std::copy(qs[i].begin(), qs[i].end(), all.begin() + i * d);
  // The pool's scores for the G queries must describe the state the pool was searched in: a write
  // by another thread in between (a new generation; a pool id that is gone makes the scoring
  // fail) means searching the pool again. Writers that keep winning that race get every query
  // searched from scratch, in one call.
  constexpr int kAttempts = 3;
  CandidatePool pool;
  std::vector<float> pool_scores;
  std::uint64_t pool_distances = 0;
  bool consistent = false;
  for (int attempt = 0; attempt < kAttempts && !consistent; ++attempt) {
    s = search_pool(index, q0, pool_size, options.filter, options.num_threads, pool, pool_distances);
    if (!s.ok()) return s;
    pool_scores.assign(nq * pool.ids.size(), 0.0f);
    if (!pool.ids.empty())
      s = index.score_ids_batch(all.data(), nq, pool.ids.data(), pool.ids.size(), pool_scores.data());
    consistent = index.generation() == pool.generation;
    if (!s.ok() && consistent) return s;
  }
  if (shared_distances) *shared_distances = pool_distances;
  if (!consistent) {
    std::vector<TurnInfo> turn(nq);
    std::vector<std::size_t> every(nq);
    for (std::size_t i = 0; i < nq; ++i) {
      every[i] = i;
      turn[i].moved = measure_move(qs[i], q0).distance;
      turn[i].margin = kNaN;
    }
    s = search_together(index, all.data(), every, k, options, scores, ids, turn);
    if (!s.ok()) return s;
    if (infos) std::copy(turn.begin(), turn.end(), infos);
    return {};
  }
  const std::size_t p = pool.ids.size();
  std::vector<TurnInfo> turn(nq);
  std::vector<std::size_t> cold;  // queries the pool could not answer and no warm start served
  for (std::size_t i = 0; i < nq; ++i) {
    // The group's scores come from one blocked pass (counted once, up front), so the scan only
    // copies them.
    turn[i].distances = p;
    const float* row = pool_scores.data() + i * p;
    const PoolScorer scorer = [&](std::size_t b, std::size_t e, float* out, std::uint64_t&) {
      std::copy(row + b, row + e, out + b);
      return Status();
    };
    bool deferred = false;
    s = answer_query(index, pool, qs[i], measure_move(qs[i], pool.anchor), &scorer, k, pool_size, options.filter,
                     options.warm_min_cosine, options.num_threads, scores + i * k, ids + i * k, turn[i], nullptr,
                     &deferred);
    if (!s.ok()) return s;
    if (deferred) cold.push_back(i);
  }
  if (!cold.empty()) {
    s = search_together(index, all.data(), cold, k, options, scores, ids, turn);
    if (!s.ok()) return s;
  }
  if (infos) std::copy(turn.begin(), turn.end(), infos);
  return {};
}

}  // namespace vsr

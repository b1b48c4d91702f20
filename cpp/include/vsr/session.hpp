// Multi-turn search sessions: a query is searched once, then refined a few times (in VideoSearch-R1
// each refined query is the original re-embedded with soft tokens, so it lands close to the
// original). A session caches the candidate pool of its last full search (the anchor query, the
// pool's ids and their scores, best first) and answers a refinement from it when a bound proves
// the answer cannot lie outside the pool. For a vector x whose anchor score is a:
//
//   inner product / cosine:  <q',x> <= ||q'|| (c a^ + s sqrt(r^2 - a^^2)),  a^ = min(a / ||q||, c r)
//                            (c, s: cosine and sine of the angle between q and q'; r = max||x||)
//   l2:                      ||q'-x|| >= ||q-x|| - ||q'-q||               (triangle inequality)
//
// Both grow with a, so vectors outside the pool (anchor score <= the pool's worst, `floor`) are
// bounded by the floor's bound, and the pool is re-scored best-first for the anchor only until the
// next entry's bound falls below the k-th best score found: the rest cannot enter the top-k.
// Otherwise the session searches again: warm-started from the pool's best candidates when the
// index supports it (graph) and the query stayed close, else a cold search (for the exact index:
// a full scan) for k results; the pool keeps its anchor. Only a stale pool, or a query that moved
// below warm_min_cosine, is replaced by a fresh pool-sized search.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

#include "vsr/index.hpp"

namespace vsr {

// How a session call produced its answer.
enum class TurnPath : std::uint8_t {
  search = 0,  // the session's first search
  pool = 1,    // re-ranked the cached pool; the bound proved no other vector can enter the top-k
  warm = 2,    // search started from the cached pool's best candidates
  cold = 3,    // search from scratch (exact index: a full scan)
};
std::string_view turn_path_name(TurnPath p) noexcept;

struct TurnInfo {
  TurnPath path = TurnPath::search;
  std::uint64_t distances = 0;  // query-to-vector distances this call computed
  bool exact = false;           // results proven equal to an exhaustive search's
  double moved = 0;             // ||q' - anchor|| (normalised queries for cosine); 0 on a first search
  // Proof slack of the pool path: k-th best score found minus the best score any vector not
  // scored (rest of the pool, or outside it) could reach, in score units (squared distance for
  // l2); >= 0 proves the pool answer. NaN when no bound applies (first search, stale pool, unknown
  // vector norms).
  double margin = 0;
  std::size_t pool_size = 0;    // candidates cached after this call
};

struct SessionOptions {
  // Candidates cached per search (0 = automatic: max(64, 8 * k)). A larger pool lets the bound
  // prove answers for larger query moves; a proven refine scores only the pool's head, and a
  // proof that does not come within max(64, 4k) scored entries is given up.
  std::size_t pool_size = 0;
  // Never return an id this session already returned.
  bool exclude_seen = false;
  // Below this cosine similarity between the new query and the pool's anchor the pool is not
  // scored at all (the bound cannot hold, a warm start does not pay) and the search is cold.
  double warm_min_cosine = 0.9;
  // Ids that may be returned (allow/deny), for every turn; copied into the session.
  IdFilter filter;
  int num_threads = 1;
};

// One candidate pool with the query it was computed for.
struct CandidatePool {
  std::vector<float> anchor;   // query the pool was searched with (normalised for cosine)
  std::vector<idx_t> ids;      // best first for the anchor
  std::vector<float> scores;   // their scores for the anchor
  float floor = 0;             // worst pool score for the anchor (metric's own units)
  bool complete = false;       // the search found fewer than pool_size vectors: nothing is outside
  bool exact = false;          // came from an exact search
  std::uint64_t generation = 0;
};

// A multi-turn search over one index. Not copyable; calls on one session are serialised by an
// internal mutex, different sessions run concurrently. The index must outlive the session.
// Other threads may add and remove vectors meanwhile: each turn answers for one state of the index
// (a pool that turns stale during the turn is searched again). k larger than the index is an
// error, as for search; with a filter, or vectors removed during the turn, missing results are
// kNoId. options.num_threads must be >= 0.
class Session {
 public:
  // Runs the first search; its results are in scores()/ids()/info().
  static Result<std::unique_ptr<Session>> start(const Index& index, const float* query, std::size_t k,
                                                SessionOptions options);

  // Re-searches with a refined query, re-using the cached pool; writes k results (missing ones
  // are kNoId) and, when info != nullptr, how they were obtained.
  Status refine(const float* query, std::size_t k, float* scores, idx_t* ids, TurnInfo* info);

  // Never returns these ids in later turns (whether or not exclude_seen is set); they join seen()
  // in the order given. The cached pool stays valid: excluded entries are skipped when it is
  // re-scored, and the bound still covers the k-th best of the ids that remain. Negative ids are
  // an error (nothing is excluded then); ids not in the index are accepted.
  Status exclude(const idx_t* ids, std::size_t n);

  std::size_t dim() const noexcept { return dim_; }
  const SessionOptions& options() const noexcept { return options_; }
  // Latest turn's results and info.
  const std::vector<float>& scores() const noexcept { return scores_; }
  const std::vector<idx_t>& ids() const noexcept { return ids_; }
  const TurnInfo& info() const noexcept { return info_; }
  // Ids returned or excluded so far, in that order.
  std::vector<idx_t> seen() const;
  std::size_t turns() const noexcept { return turns_; }

 private:
  Session(const Index& index, SessionOptions options);
  Status run_turn(const float* query, std::size_t k, bool first);
  // Records id in seen_order_ and, when `exclude`, drops it from every later turn.
  void mark_seen(idx_t id, bool exclude);

  const Index& index_;
  std::size_t dim_;
  SessionOptions options_;
  CandidatePool pool_;
  IdFilter effective_filter_;  // options_.filter less the excluded ids (and the seen ones when exclude_seen)
  std::vector<idx_t> seen_order_;
  std::vector<float> scores_;
  std::vector<idx_t> ids_;
  TurnInfo info_;
  std::size_t turns_ = 0;
  mutable std::mutex mutex_;
};

struct GroupOptions {
  std::size_t pool_size = 0;  // 0 = automatic, as for sessions
  double warm_min_cosine = 0.9;
  const IdFilter* filter = nullptr;  // not owned
  int num_threads = 1;
};

// The G refined queries of one GRPO group share the original query's candidate pool: one search
// for the original, then all G queries scored against the pool in one blocked pass, and a search
// only for the queries the bound cannot settle (warm starts one by one; searches from scratch
// together in one call). Writes nq * k results; infos (nq entries) and
// shared_distances (the pool search's distances) are optional. Under concurrent writes each query
// is answered for one state of the index; when writes keep invalidating the pool between its
// search and its scoring, every query is searched from scratch.
Status refine_group(const Index& index, const float* original, const float* refined, std::size_t nq,
                    std::size_t k, const GroupOptions& options, float* scores, idx_t* ids, TurnInfo* infos,
                    std::uint64_t* shared_distances);

}  // namespace vsr

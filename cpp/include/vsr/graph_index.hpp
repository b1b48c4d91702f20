// Approximate search on a hierarchical navigable small-world graph (HNSW, Malkov & Yashunin 2018)
// over compressed vectors, with exact re-ranking from float32 originals.
//
// Layout: node slots are rows. Layer-0 links are one flat array of (count, 2M links) per slot;
// upper-layer links (few nodes) are blocks in one array. Codes (the storage codec's rows) drive the
// graph walk; float32 originals, kept when the storage is compressed, re-rank the walk's results.
// Removed nodes are unlinked and their in-neighbours re-linked through the removed node's
// neighbours (so recall holds after many removals), and their slots are reused by later adds.
//
// Thread safety: searches run concurrently with each other; add/remove/save take an exclusive
// lock (a build is itself parallel).
//
// Failure: add and remove are all-or-nothing, also when memory runs out. Each first makes room
// for everything it will write (slots, id map, link-list space, the workers' walk buffers), and
// only then changes the index, with steps that cannot fail.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "vsr/codec.hpp"
#include "vsr/index.hpp"
#include "vsr/id_map.hpp"
#include "vsr/io.hpp"
#include "vsr/kernels.hpp"
#include "vsr/mapped_array.hpp"

namespace vsr {

struct GraphOptions {
  Metric metric = Metric::inner_product;
  Storage storage = Storage::f32;  // form the graph walk reads; compressed forms keep f32 originals
  std::size_t M = 16;              // links per node on upper layers; 2M on layer 0
  std::size_t ef_construction = 200;
  std::size_t ef_search = 64;
  std::uint64_t seed = 42;  // level assignment
};

class GraphIndex final : public Index {
 public:
  static Result<std::unique_ptr<GraphIndex>> make(std::size_t dim, const GraphOptions& options);
  static Result<std::unique_ptr<GraphIndex>> load(const std::string& path, bool use_mmap, bool verify);

  std::size_t dim() const noexcept override { return dim_; }
  Metric metric() const noexcept override { return opts_.metric; }
  std::size_t size() const noexcept override;
  std::string_view kind_name() const noexcept override { return "graph"; }
  const GraphOptions& options() const noexcept { return opts_; }
  bool is_mapped() const noexcept;

  // Inserts in parallel (num_threads() workers).
  Status add(const float* vectors, std::size_t n, const idx_t* ids) override;
  Status remove(const idx_t* ids, std::size_t n) override;
  Status search(const float* queries, std::size_t nq, std::size_t k, float* scores, idx_t* ids,
                const SearchParams& params) const override;
  Status search_warm(const float* query, std::size_t k, const idx_t* seeds, std::size_t n_seeds, float* scores,
                     idx_t* ids, const SearchParams& params) const override;
  Status score_ids(const float* query, const idx_t* ids, std::size_t n, float* scores) const override;
  Status score_ids_prepared(const float* query, const idx_t* ids, std::size_t n, float* scores) const override;
  // Always exact: f32 storage is the rows themselves, compressed storage keeps float32 originals.
  Status reconstruct(const idx_t* ids, std::size_t n, float* out) const override;
  // Approximate, like search(): k-NN walks with k doubling until the k-th result leaves the ball.
  Status range_search(const float* queries, std::size_t nq, float radius, RangeResult* out,
                      const SearchParams& params) const override;
  std::uint64_t generation() const noexcept override { return generation_.load(); }
  std::optional<float> max_norm() const noexcept override;
  Status save(const std::string& path) const override;

  // Candidate list size of searches (>= k is used); larger is slower and more accurate.
  Status set_ef_search(std::size_t ef);
  std::size_t ef_search() const noexcept { return ef_search_.load(); }
  // Candidate list size of warm-started searches (search_warm: session and group refines); 0 =
  // ef_search. A walk that starts next to the answer reaches a given recall with a narrower beam
  // than one that starts at the entry point. Not saved with the index.
  Status set_warm_ef_search(std::size_t ef);
  std::size_t warm_ef_search() const noexcept { return warm_ef_search_.load(); }
  void set_num_threads(int n) noexcept { num_threads_.store(n < 0 ? 0 : n); }
  int num_threads() const noexcept { return num_threads_.load(); }
  // Links per node summed over layers (for memory reports and tests).
  std::size_t link_count() const;

 private:
  struct Candidate {
    float dist;  // lower is better: -similarity for ip/cosine, squared distance for l2
    std::uint32_t slot;
  };
  // Per-thread visited marks for one walk; an epoch counter makes reset O(1).
  class Visited {
   public:
    // Room for n slots, so that reset(n) will not allocate.
    void reserve(std::size_t n) {
      if (marks_.size() < n) {
        marks_.assign(n + n / 4, 0);
        epoch_ = 0;
      }
    }
    void reset(std::size_t n) {
      if (marks_.size() < n) {
        marks_.assign(n + n / 4, 0);
        epoch_ = 0;
      }
      if (++epoch_ == 0) {
        std::fill(marks_.begin(), marks_.end(), std::uint16_t(0));
        epoch_ = 1;
      }
    }
    // True if slot was already visited; marks it either way.
    bool check_and_mark(std::uint32_t slot) noexcept {
      if (marks_[slot] == epoch_) return true;
      marks_[slot] = epoch_;
      return false;
    }

    // The raw marks and the current epoch, for a hot loop that keeps them in registers
    // (check_and_mark's stores could alias them and force a reload per neighbour).
    std::uint16_t* marks() noexcept { return marks_.data(); }
    std::uint16_t epoch() const noexcept { return epoch_; }

   private:
    std::vector<std::uint16_t> marks_;
    std::uint16_t epoch_ = 0;
  };
  // The best ef nodes of an unfiltered walk, ascending, each marked once expanded. It replaces
  // HNSW's frontier and result heaps exactly: a frontier node worse than the ef-th result can
  // never be expanded (the results only improve), so the frontier is the unexpanded results.
  class Beam {
   public:
    struct Entry {
      float dist;
      std::uint32_t slot;
      bool expanded;
    };
    void reserve(std::size_t capacity) { items_.reserve(capacity + 1); }
    void reset(std::size_t capacity) {
      items_.clear();
      items_.reserve(capacity + 1);
      capacity_ = capacity;
      cursor_ = 0;
    }
    // Inserts (dist, slot) in order unless the list is full and it is no better than the last.
    bool push(float dist, std::uint32_t slot) {
      const std::size_t n = items_.size();
      if (n >= capacity_ && !(dist < items_.back().dist)) return false;
      std::size_t at = n;
      while (at > 0 && items_[at - 1].dist > dist) --at;  // after equal distances, as a heap would
      items_.insert(items_.begin() + std::ptrdiff_t(at), Entry{dist, slot, false});
      if (items_.size() > capacity_) items_.pop_back();
      if (at < cursor_) cursor_ = at;
      return true;
    }
    // The best unexpanded entry's slot, marking it expanded; false when every entry is expanded.
    bool next(std::uint32_t& slot) noexcept {
      while (cursor_ < items_.size() && items_[cursor_].expanded) ++cursor_;
      if (cursor_ == items_.size()) return false;
      items_[cursor_].expanded = true;
      slot = items_[cursor_].slot;
      return true;
    }
    // The slot next() would return (kNoSlot if none), without marking it: for prefetching.
    std::uint32_t peek() const noexcept {
      for (std::size_t i = cursor_; i < items_.size(); ++i)
        if (!items_[i].expanded) return items_[i].slot;
      return kNoSlot;
    }
    const std::vector<Entry>& items() const noexcept { return items_; }

   private:
    std::vector<Entry> items_;
    std::size_t capacity_ = 0;
    std::size_t cursor_ = 0;  // no unexpanded entry before it
  };
  // A query as the walk scores it: float32 (l2, single distances) and the row kernels' prepared
  // form (StorageKernels::prepare), converted once per walk instead of once per expansion.
  struct WalkQuery {
    const float* q;
    const std::uint8_t* prepared;
  };
  using PreparedBuffer = std::vector<std::uint8_t, CacheAlignedAllocator<std::uint8_t>>;
  WalkQuery prepare_walk(const float* q, PreparedBuffer& buffer) const;
  // Per-thread buffers of graph walks, reused from one walk to the next (no allocation once warm).
  // Fetched once per search call or insertion: every thread_local access in a shared library is a
  // call into the dynamic linker.
  struct WalkScratch {
    Visited visited;
    Beam beam;                          // unfiltered walks
    std::vector<Candidate> frontier;    // filtered walks: min-heap of nodes to expand
    PreparedBuffer prepared;            // the query in the row kernels' form
    std::vector<Candidate> entry, found;
    std::vector<std::uint32_t> slots;   // candidates to score exactly
    std::vector<float> scores;
  };
  static WalkScratch& search_scratch();
  // Buffers of one insertion worker, sized before an add commits (reserve), so that inserting
  // allocates nothing and cannot fail half-way.
  struct BuildScratch {
    WalkScratch walk;
    std::vector<float> query, row, select;  // the new node, a neighbour (decoded), select_neighbors'
    std::vector<Candidate> cands;
    std::vector<std::uint32_t> chosen, kept;
    void reserve(const GraphIndex& index, std::size_t capacity);
  };
  // Buffers of one worker of a removal's link repair, sized before the removal commits.
  struct RepairScratch {
    std::vector<float> row, select;
    std::vector<Candidate> cands;
    std::vector<std::uint32_t> pool, kept;
    void reserve(const GraphIndex& index);
  };

  GraphIndex(std::size_t dim, const GraphOptions& options);

  // Graph structure.
  std::size_t warm_ef() const noexcept {
    const std::size_t warm = warm_ef_search_.load();
    return warm > 0 ? warm : ef_search_.load();
  }
  std::size_t max_links(int level) const noexcept { return level == 0 ? 2 * opts_.M : opts_.M; }
  const std::uint32_t* links(std::uint32_t slot, int level) const noexcept {
    if (level == 0) return level0_.data() + std::size_t(slot) * (1 + 2 * opts_.M);
    return upper_links_.data() + upper_at_[slot] + std::size_t(level - 1) * (1 + opts_.M);
  }
  // Requests every cache line of [p, p + bytes): a walk reads link lists and code rows at random,
  // where the hardware prefetchers do not help, and a line requested only when it is read costs
  // a whole trip to memory.
  static void prefetch_bytes(const void* p, std::size_t bytes) noexcept {
    const char* b = static_cast<const char*>(p);
    for (std::size_t off = 0; off < bytes; off += 64) __builtin_prefetch(b + off);
    __builtin_prefetch(b + bytes - 1);  // the last line, when the block straddles one more
  }
  // How much of each neighbour's row a walk requests up front: all of a short row; the head of a
  // long one, whose rest the gather kernel fetches while it scores the rows before (requesting
  // whole long rows for every neighbour at once would flood the core's outstanding misses).
  static std::size_t row_head_bytes(std::size_t row_bytes) noexcept {
    return std::min<std::size_t>(row_bytes, kGatherHeadBytes);
  }
  std::uint32_t* links_mut(std::uint32_t slot, int level) noexcept {
    if (level == 0) return level0_.own().data() + std::size_t(slot) * (1 + 2 * opts_.M);
    return upper_links_.data() + upper_at_[slot] + std::size_t(level - 1) * (1 + opts_.M);
  }
  std::mutex& node_lock(std::uint32_t slot) const noexcept { return node_locks_[slot % kNodeLocks]; }

  // Distances.
  float dist_to(const float* q, std::uint32_t slot) const noexcept {
    const std::uint8_t* row = codes_.data() + std::size_t(slot) * codec_.row_bytes();
    return opts_.metric == Metric::l2 ? row_kernels_->l2sq(q, row, dim_) : -row_kernels_->dot(q, row, dim_);
  }
  // out[i] = dist_to(q, slots[i]) for i < n, in one kernel call for ip / cosine (which may score
  // a little differently from dist_to: e.g. int8 rows against an int16-quantised query).
  void score_slots(const WalkQuery& wq, const std::uint32_t* slots, std::size_t n, float* out) const noexcept;
  float exact_score(const float* q, std::uint32_t slot) const noexcept;  // metric units
  // out[i] = exact_score(q, slots[i]) for i < n, the rows gathered in one kernel call.
  void exact_scores(const float* q, const std::uint32_t* slots, std::size_t n, float* out) const noexcept;
  // Requests the heads of the slots' code rows (row_head_bytes) together, before a gather of them.
  void request_codes(const std::uint32_t* slots, std::size_t n) const noexcept;
  void decode_slot(std::uint32_t slot, float* out) const noexcept;
  // The slot's vector as float32: the stored row itself for f32 storage, else decoded into buffer.
  const float* row_f32(std::uint32_t slot, float* buffer) const noexcept;

  // Search primitives (graph_index_search.cpp). `locked` reads links under node locks (build).
  template <bool locked>
  std::uint32_t greedy_descend(const WalkQuery& wq, std::uint32_t ep, float ep_dist, int from_level, int to_level,
                               std::uint64_t& dcount) const;
  template <bool locked>
  void search_layer(const WalkQuery& wq, const std::vector<Candidate>& entry, std::size_t ef, int level,
                    const IdFilter* filter, WalkScratch& ws, std::vector<Candidate>& out,
                    std::uint64_t& dcount) const;
  // The unfiltered walk of search_layer: one sorted list of the best ef, each entry expanded once.
  template <bool locked>
  void beam_search(const WalkQuery& wq, const std::vector<Candidate>& entry, std::size_t ef, int level,
                   WalkScratch& ws, std::vector<Candidate>& out, std::uint64_t& dcount) const;
  // Writes slot's unvisited neighbours on `level` to out (marking them visited, requesting their
  // rows) and returns how many; reads the links under the node's lock when `locked` (a build).
  template <bool locked>
  std::uint32_t unvisited_neighbors(std::uint32_t slot, int level, Visited& visited, std::uint32_t* out) const noexcept;
  void select_neighbors(std::vector<Candidate>& cands, std::size_t m, std::vector<std::uint32_t>& out,
                        std::vector<float>& buffer) const;
  // One query end to end: filter strategy, walk (from seeds when given), re-rank, top-k.
  void search_one(WalkScratch& ws, const float* q, std::size_t k, const std::uint32_t* seeds, std::size_t n_seeds,
                  const IdFilter* filter, float* scores, idx_t* ids, std::uint64_t& dcount) const;
  void scan_rows(const float* q, const std::vector<std::uint32_t>& rows, std::size_t k, float* scores, idx_t* ids,
                 std::uint64_t& dcount) const;

  // Build primitives (graph_index.cpp).
  template <bool locked>
  void insert(std::uint32_t slot, int level, BuildScratch& scratch);
  void connect(std::uint32_t slot, int level, const std::vector<std::uint32_t>& neighbors, BuildScratch& scratch);
  void repair(const std::vector<char>& removed, std::vector<RepairScratch>& scratch);
  int random_level(std::uint32_t slot) const noexcept;
  // Room in every per-slot array for `capacity` slots; grow() then cannot fail.
  void reserve_slots(std::size_t capacity);
  void grow(std::size_t capacity);
  // Drops removed nodes' upper-layer blocks from upper_links_ (live slots only: call it before
  // new slots get their levels).
  void compact_upper();
  // Gives each of `slots` (levels_ set) a zeroed upper-layer block. Called before inserting, so a
  // parallel build never resizes the array.
  void allocate_upper(const std::vector<std::uint32_t>& slots);
  std::size_t capacity() const noexcept { return ids_.size(); }
  void make_owned();
  // For an index served from a mapped file: an error when the file changed on disk since it was
  // mapped (reading it then could return other data or kill the process with SIGBUS).
  Status check_file() const;

  static constexpr std::size_t kNodeLocks = 4096;
  // Largest candidate list (ef_construction, ef_search): far beyond any useful setting, small
  // enough that a walk's buffers always fit in memory.
  static constexpr std::size_t kMaxEf = std::size_t(1) << 20;
  static constexpr std::uint32_t kNoSlot = 0xFFFFFFFFu;

  std::size_t dim_;
  GraphOptions opts_;
  Codec codec_;
  const Kernels* kernels_;
  const StorageKernels* row_kernels_;  // the codec's row scorers, called directly in the walk
  bool keep_originals_;
  std::atomic<std::size_t> ef_search_;
  std::atomic<std::size_t> warm_ef_search_{0};
  std::atomic<int> num_threads_{0};

  // Per slot (capacity rows); a free slot has id kNoId.
  MappedArray<std::uint8_t> codes_;
  MappedArray<float> originals_;
  MappedArray<std::uint32_t> level0_;  // (1 + 2M) per slot: count, links
  MappedArray<idx_t> ids_;
  std::vector<std::uint8_t> levels_;
  // Upper-layer links: a block of levels_[s] * (1 + M) words (count, links per layer) for every
  // slot above layer 0, at upper_at_[s] in one array, so that a descent step reads the block
  // directly rather than a per-node vector's header and then its buffer. Removed nodes' blocks
  // are garbage until add() compacts the array.
  std::vector<std::uint32_t> upper_links_;
  std::vector<std::size_t> upper_at_;
  std::size_t upper_garbage_ = 0;  // words in removed nodes' blocks
  std::vector<std::uint32_t> free_slots_;
  IdMap<std::uint32_t> slot_of_;
  std::size_t live_ = 0;
  idx_t next_id_ = 0;
  std::uint32_t entry_ = kNoSlot;
  int max_level_ = -1;

  std::atomic<std::uint64_t> generation_{0};
  mutable std::atomic<float> max_norm_{-1.0f};
  std::vector<std::unique_ptr<BuildScratch>> build_scratch_;  // one per insertion worker (add holds the lock)
  std::unique_ptr<std::mutex[]> node_locks_;
  std::mutex entry_mutex_;  // entry_/max_level_ during a parallel build
  std::shared_ptr<io::FileReader> file_;
  mutable std::shared_mutex mutex_;
};

}  // namespace vsr

// GraphIndex persistence in the section container of io.hpp (same file family as the flat index).
//
// Sections: "graph.meta" (fixed record below), "ids" (int64 per slot, -1 = free slot), "codes"
// (slot x row_bytes), "originals" (slot x dim float32, compressed storages only), "level0"
// (slot x (1 + 2M) uint32: count, links), "levels" (uint8 per slot), "upper" (for each slot in
// order, levels[slot] x (1 + M) uint32). Codes, originals, level-0 links and ids are served from
// the mapping when loaded with mmap; the small upper layers are copied.
#include <cstring>
#include <string>

#include "vsr/graph_index.hpp"
#include "vsr/input_checks.hpp"

namespace vsr {

namespace {

constexpr std::uint32_t kGraphKindVersion = 1;

struct Meta {
  std::uint64_t dim;
  std::uint32_t metric;
  std::uint32_t storage;
  std::uint64_t M;
  std::uint64_t ef_construction;
  std::uint64_t ef_search;
  std::uint64_t seed;
  std::uint64_t capacity;
  std::uint64_t live;
  std::int64_t next_id;
  std::uint32_t entry;
  std::int32_t max_level;
  std::uint64_t row_bytes;
};
static_assert(sizeof(Meta) == 88, "Meta is a fixed on-disk record");

Error corrupt(const std::string& path, const std::string& what) {
  return make_error(ErrorCode::corrupt_file, "'" + path + "': " + what);
}

}  // namespace

Status GraphIndex::save(const std::string& path) const {
  std::shared_lock lock(mutex_);
  Status checked = check_file();
  if (!checked.ok()) return checked;
  Meta meta{dim_,
            std::uint32_t(opts_.metric),
            std::uint32_t(opts_.storage),
            opts_.M,
            opts_.ef_construction,
            ef_search_.load(),
            opts_.seed,
            capacity(),
            live_,
            next_id_,
            entry_,
            max_level_,
            codec_.row_bytes()};
  std::vector<std::uint8_t> meta_bytes(sizeof meta);
  std::memcpy(meta_bytes.data(), &meta, sizeof meta);
  std::vector<std::uint32_t> upper;  // each slot's block in slot order (removed slots have level 0)
  for (std::size_t s = 0; s < capacity(); ++s) {
    if (levels_[s] == 0) continue;
    const auto block = upper_links_.begin() + std::ptrdiff_t(upper_at_[s]);
    upper.insert(upper.end(), block, block + std::ptrdiff_t(levels_[s] * (1 + opts_.M)));
  }
  io::FileWriter w(io::IndexKind::graph, kGraphKindVersion);
  Status st = w.add_owned("graph.meta", std::move(meta_bytes));
  if (st.ok()) st = w.add("ids", ids_.data(), capacity() * sizeof(idx_t));
  if (st.ok()) st = w.add("codes", codes_.data(), codes_.size());
  if (st.ok() && keep_originals_) st = w.add("originals", originals_.data(), originals_.size() * sizeof(float));
  if (st.ok()) st = w.add("level0", level0_.data(), level0_.size() * sizeof(std::uint32_t));
  if (st.ok()) st = w.add("levels", levels_.data(), levels_.size());
  if (st.ok()) st = w.add("upper", upper.data(), upper.size() * sizeof(std::uint32_t));
  if (!st.ok()) return st;
  return w.write(path);
}

Result<std::unique_ptr<GraphIndex>> GraphIndex::load(const std::string& path, bool use_mmap, bool verify) {
  auto opened = io::FileReader::open(path, use_mmap, verify);
  if (!opened.ok()) return opened.error();
  std::shared_ptr<io::FileReader> file = std::move(opened).value();
  if (file->kind() != io::IndexKind::graph)
    return make_error(ErrorCode::invalid_argument, "'" + path + "' holds a " +
                                                       std::string(io::index_kind_name(file->kind())) +
                                                       " index, not a graph index");
  if (file->kind_version() != kGraphKindVersion)
    return make_error(ErrorCode::unsupported, "'" + path + "' has graph index version " +
                                                  std::to_string(file->kind_version()) + "; this library reads " +
                                                  std::to_string(kGraphKindVersion));
  auto meta_section = file->section("graph.meta", sizeof(Meta));
  if (!meta_section.ok()) return meta_section.error();
  Meta meta;
  std::memcpy(&meta, meta_section.value().data, sizeof meta);
  if (meta.metric > std::uint32_t(Metric::l2)) return corrupt(path, "unknown metric " + std::to_string(meta.metric));
  if (meta.storage >= kNumStorages) return corrupt(path, "unknown storage " + std::to_string(meta.storage));
  GraphOptions opts;
  opts.metric = Metric(meta.metric);
  opts.storage = Storage(meta.storage);
  opts.M = meta.M;
  opts.ef_construction = meta.ef_construction;
  opts.ef_search = meta.ef_search;
  opts.seed = meta.seed;
  auto made = make(meta.dim, opts);
  if (!made.ok()) return corrupt(path, "invalid settings: " + made.error().message);
  std::unique_ptr<GraphIndex> index = std::move(made).value();
  const std::size_t rb = index->codec_.row_bytes();
  if (meta.row_bytes != rb) return corrupt(path, "row size does not match its settings");
  if (meta.capacity >= kNoSlot || meta.live > meta.capacity) return corrupt(path, "impossible vector count");
  const std::size_t cap = meta.capacity, stride = 1 + 2 * opts.M;
  if (cap > 0 && (rb > SIZE_MAX / cap || meta.dim * sizeof(float) > SIZE_MAX / cap || stride * 4 > SIZE_MAX / cap))
    return corrupt(path, "impossible vector count");

  auto ids = file->section("ids", cap * sizeof(idx_t));
  if (!ids.ok()) return ids.error();
  auto codes = file->section("codes", cap * rb);
  if (!codes.ok()) return codes.error();
  auto level0 = file->section("level0", cap * stride * sizeof(std::uint32_t));
  if (!level0.ok()) return level0.error();
  auto levels = file->section("levels", cap);
  if (!levels.ok()) return levels.error();
  auto upper = file->section("upper");
  if (!upper.ok()) return upper.error();
  const auto* id_data = reinterpret_cast<const idx_t*>(ids.value().data);
  const auto* l0 = reinterpret_cast<const std::uint32_t*>(level0.value().data);
  index->ids_.set_view(id_data, cap);
  index->codes_.set_view(codes.value().data, cap * rb);
  index->level0_.set_view(l0, cap * stride);
  if (index->keep_originals_) {
    auto originals = file->section("originals", cap * meta.dim * sizeof(float));
    if (!originals.ok()) return originals.error();
    index->originals_.set_view(reinterpret_cast<const float*>(originals.value().data), cap * meta.dim);
  }
  // Upper layers are copied; every count and link is checked so a damaged file cannot send a
  // walk out of bounds.
  index->levels_.assign(levels.value().data, levels.value().data + cap);
  index->upper_at_.resize(cap, 0);
  const std::size_t ustride = 1 + opts.M;
  const auto* up = reinterpret_cast<const std::uint32_t*>(upper.value().data);
  const std::size_t up_words = upper.value().size / sizeof(std::uint32_t);
  std::size_t pos = 0;
  for (std::size_t s = 0; s < cap; ++s) {
    const std::size_t words = std::size_t(index->levels_[s]) * ustride;
    if (index->levels_[s] > 15 || pos + words > up_words) return corrupt(path, "upper layers are truncated");
    index->upper_at_[s] = pos;
    pos += words;
  }
  if (pos != up_words) return corrupt(path, "upper layers have trailing data");
  index->upper_links_.assign(up, up + up_words);
  // A link on layer `level` must lead to a live node that has that layer (a walk reads the
  // target's links of the same layer).
  auto check_links = [&](const std::uint32_t* l, std::size_t max, int level) {
    if (l[0] > max) return false;
    for (std::uint32_t i = 0; i < l[0]; ++i)
      if (l[1 + i] >= cap || id_data[l[1 + i]] == kNoId || index->levels_[l[1 + i]] < level) return false;
    return true;
  };
  index->slot_of_.reserve(meta.live);
  idx_t max_id = -1;
  for (std::size_t s = 0; s < cap; ++s) {
    const idx_t id = id_data[s];
    if (id == kNoId) {
      index->free_slots_.push_back(std::uint32_t(s));
      continue;
    }
    if (id < 0) return corrupt(path, "negative id " + std::to_string(id));
    if (!index->slot_of_.emplace(id, std::uint32_t(s)).second) return corrupt(path, "duplicate id " + std::to_string(id));
    max_id = std::max(max_id, id);
    if (!check_links(l0 + s * stride, 2 * opts.M, 0)) return corrupt(path, "bad layer-0 links at slot " + std::to_string(s));
    for (int l = 1; l <= index->levels_[s]; ++l)
      if (!check_links(index->links(std::uint32_t(s), l), opts.M, l))
        return corrupt(path, "bad upper-layer links at slot " + std::to_string(s));
  }
  if (index->slot_of_.size() != meta.live) return corrupt(path, "live count does not match the ids");
  if (meta.next_id <= max_id || meta.next_id < 0) return corrupt(path, "next id is not above every id");
  if (meta.live > 0 && (meta.entry >= cap || id_data[meta.entry] == kNoId || index->levels_[meta.entry] != meta.max_level))
    return corrupt(path, "bad entry point");
  index->live_ = meta.live;
  index->next_id_ = meta.next_id;
  index->entry_ = meta.live > 0 ? meta.entry : kNoSlot;
  index->max_level_ = meta.live > 0 ? meta.max_level : -1;
  index->file_ = std::move(file);
  return index;
}

Status GraphIndex::reconstruct(const idx_t* ids, std::size_t n, float* out) const {
  if (n == 0) return {};
  if (out == nullptr) return make_error(ErrorCode::invalid_argument, "output is null");
  std::shared_lock lock(mutex_);
  Status st = check_file();
  if (!st.ok()) return st;
  std::vector<std::uint32_t> slots;
  st = lookup_rows(ids, n, slot_of_, slots);
  if (!st.ok()) return st;
  for (std::size_t j = 0; j < n; ++j) {
    const float* x = keep_originals_ ? originals_.data() + std::size_t(slots[j]) * dim_ : row_f32(slots[j], out + j * dim_);
    if (x != out + j * dim_) std::memcpy(out + j * dim_, x, dim_ * sizeof(float));
  }
  return {};
}

}  // namespace vsr

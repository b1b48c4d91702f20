// FlatIndex persistence in the section container of io.hpp.
//
// Sections: "flat.meta" (fixed little-endian record below), "ids" (int64 x n), "codes"
// (n x row_bytes), "sqnorms" (float32 x n, l2 only), "originals" (float32 x n x dim, rerank only).
#include <cmath>
#include <cstring>
#include <string>

#include "vsr/flat_index.hpp"

namespace vsr {

namespace {

constexpr std::uint32_t kFlatKindVersion = 1;

struct Meta {
  std::uint64_t dim;
  std::uint32_t metric;
  std::uint32_t storage;
  std::uint64_t rerank;
  std::uint64_t count;
  std::int64_t next_id;
  std::uint64_t row_bytes;
  double max_sq_norm;
};
static_assert(sizeof(Meta) == 56, "Meta is a fixed on-disk record");

Error corrupt(const std::string& path, const std::string& what) {
  return make_error(ErrorCode::corrupt_file, "'" + path + "': " + what);
}

// n * size without overflow; false if it would overflow.
bool checked_mul(std::uint64_t n, std::uint64_t size, std::size_t* out) {
  if (size != 0 && n > SIZE_MAX / size) return false;
  *out = std::size_t(n * size);
  return true;
}

}  // namespace

Status FlatIndex::save(const std::string& path) const {
  std::shared_lock lock(mutex_);
  Status checked = check_file();
  if (!checked.ok()) return checked;
  Meta meta{dim_,
            std::uint32_t(opts_.metric),
            std::uint32_t(opts_.storage),
            opts_.rerank,
            ids_.size(),
            next_id_,
            codec_.row_bytes(),
            max_sq_norm_};
  std::vector<std::uint8_t> meta_bytes(sizeof meta);
  std::memcpy(meta_bytes.data(), &meta, sizeof meta);
  io::FileWriter w(io::IndexKind::flat, kFlatKindVersion);
  Status st = w.add_owned("flat.meta", std::move(meta_bytes));
  if (st.ok()) st = w.add("ids", ids_.data(), ids_.size() * sizeof(idx_t));
  if (st.ok()) st = w.add("codes", codes_.data(), codes_.size());
  if (st.ok() && opts_.metric == Metric::l2) st = w.add("sqnorms", sqnorms_.data(), sqnorms_.size() * sizeof(float));
  if (st.ok() && opts_.rerank > 0) st = w.add("originals", originals_.data(), originals_.size() * sizeof(float));
  if (!st.ok()) return st;
  return w.write(path);
}

Result<std::unique_ptr<FlatIndex>> FlatIndex::load(const std::string& path, bool use_mmap, bool verify) {
  auto opened = io::FileReader::open(path, use_mmap, verify);
  if (!opened.ok()) return opened.error();
  std::shared_ptr<io::FileReader> file = std::move(opened).value();
  if (file->kind() != io::IndexKind::flat)
    return make_error(ErrorCode::invalid_argument, "'" + path + "' holds a " +
                                                       std::string(io::index_kind_name(file->kind())) +
                                                       " index, not a flat index");
  if (file->kind_version() != kFlatKindVersion)
    return make_error(ErrorCode::unsupported, "'" + path + "' has flat index version " +
                                                  std::to_string(file->kind_version()) + "; this library reads " +
                                                  std::to_string(kFlatKindVersion));
  auto meta_section = file->section("flat.meta", sizeof(Meta));
  if (!meta_section.ok()) return meta_section.error();
  Meta meta;
  std::memcpy(&meta, meta_section.value().data, sizeof meta);
  if (meta.metric > std::uint32_t(Metric::l2)) return corrupt(path, "unknown metric " + std::to_string(meta.metric));
  if (meta.storage >= kNumStorages) return corrupt(path, "unknown storage " + std::to_string(meta.storage));
  FlatOptions opts;
  opts.metric = Metric(meta.metric);
  opts.storage = Storage(meta.storage);
  opts.rerank = meta.rerank;
  auto made = make(meta.dim, opts);
  if (!made.ok()) return corrupt(path, "invalid settings: " + made.error().message);
  std::unique_ptr<FlatIndex> index = std::move(made).value();
  const std::size_t rb = index->codec_.row_bytes();
  if (meta.row_bytes != rb) return corrupt(path, "row size " + std::to_string(meta.row_bytes) + " does not match its settings");
  std::size_t id_bytes = 0, code_bytes = 0, orig_bytes = 0, norm_bytes = 0;
  if (!checked_mul(meta.count, sizeof(idx_t), &id_bytes) || !checked_mul(meta.count, rb, &code_bytes) ||
      !checked_mul(meta.count, std::uint64_t(meta.dim) * sizeof(float), &orig_bytes) ||
      !checked_mul(meta.count, sizeof(float), &norm_bytes))
    return corrupt(path, "vector count " + std::to_string(meta.count) + " is impossible");

  auto ids = file->section("ids", id_bytes);
  if (!ids.ok()) return ids.error();
  auto codes = file->section("codes", code_bytes);
  if (!codes.ok()) return codes.error();
  const auto* id_data = reinterpret_cast<const idx_t*>(ids.value().data);
  index->ids_.set_view(id_data, meta.count);
  index->codes_.set_view(codes.value().data, code_bytes);
  if (opts.metric == Metric::l2) {
    auto norms = file->section("sqnorms", norm_bytes);
    if (!norms.ok()) return norms.error();
    index->sqnorms_.set_view(reinterpret_cast<const float*>(norms.value().data), meta.count);
  }
  if (opts.rerank > 0) {
    auto originals = file->section("originals", orig_bytes);
    if (!originals.ok()) return originals.error();
    index->originals_.set_view(reinterpret_cast<const float*>(originals.value().data), meta.count * meta.dim);
  }
  // The id map is rebuilt, which also proves the ids valid.
  index->row_of_.reserve(meta.count);
  idx_t max_id = -1;
  for (std::size_t r = 0; r < meta.count; ++r) {
    const idx_t id = id_data[r];
    if (id < 0) return corrupt(path, "negative id " + std::to_string(id) + " at row " + std::to_string(r));
    if (!index->row_of_.emplace(id, r).second) return corrupt(path, "duplicate id " + std::to_string(id));
    max_id = std::max(max_id, id);
  }
  if (meta.next_id <= max_id || meta.next_id < 0)
    return corrupt(path, "next id " + std::to_string(meta.next_id) + " is not above every id");
  if (!(meta.max_sq_norm >= 0.0) || !std::isfinite(meta.max_sq_norm)) return corrupt(path, "invalid maximum norm");
  index->next_id_ = meta.next_id;
  index->max_sq_norm_ = meta.max_sq_norm;
  index->file_ = std::move(file);
  return index;
}

}  // namespace vsr

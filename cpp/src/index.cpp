#include "vsr/index.hpp"

namespace vsr {

namespace {
Error unsupported(const Index& index, const char* what) {
  return make_error(ErrorCode::unsupported, std::string(what) + " is not supported by the " +
                                                std::string(index.kind_name()) + " index");
}
}  // namespace

Status Index::remove(const idx_t*, std::size_t) { return unsupported(*this, "remove"); }

Status Index::reconstruct(const idx_t*, std::size_t, float*) const {
  return unsupported(*this, "reconstruct");
}

Status Index::range_search(const float*, std::size_t, float, RangeResult*, const SearchParams&) const {
  return unsupported(*this, "range_search");
}

Status Index::save(const std::string&) const { return unsupported(*this, "save"); }

}  // namespace vsr

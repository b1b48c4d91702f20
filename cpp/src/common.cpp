#include "vsr/common.hpp"

namespace vsr {

std::string_view metric_name(Metric m) noexcept {
  switch (m) {
    case Metric::inner_product: return "ip";
    case Metric::cosine: return "cosine";
    case Metric::l2: return "l2";
  }
  return "unknown";
}

std::optional<Metric> metric_from_name(std::string_view name) noexcept {
  if (name == "ip" || name == "inner_product") return Metric::inner_product;
  if (name == "cosine" || name == "cos") return Metric::cosine;
  if (name == "l2" || name == "l2sq") return Metric::l2;
  return std::nullopt;
}

}  // namespace vsr

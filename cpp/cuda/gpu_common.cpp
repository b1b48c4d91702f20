// Parts of the GPU API that need no CUDA toolkit.
#include "vsr/gpu_flat_index.hpp"

namespace vsr {

std::string_view element_type_name(ElementType t) noexcept {
  switch (t) {
    case ElementType::f32: return "f32";
    case ElementType::f16: return "f16";
    case ElementType::bf16: return "bf16";
  }
  return "unknown";
}

std::optional<ElementType> element_type_from_name(std::string_view name) noexcept {
  if (name == "f32" || name == "float32") return ElementType::f32;
  if (name == "f16" || name == "float16") return ElementType::f16;
  if (name == "bf16" || name == "bfloat16") return ElementType::bf16;
  return std::nullopt;
}

}  // namespace vsr

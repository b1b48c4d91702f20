// CPU feature detection and the run-time choice of kernel set.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace vsr {

enum class Isa : unsigned char { scalar = 0, avx2 = 1, avx512 = 2, neon = 3 };

std::string_view isa_name(Isa isa) noexcept;
std::optional<Isa> isa_from_name(std::string_view name) noexcept;

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512vnni = false;
  bool avx512bf16 = false;
  bool neon = false;
};

const CpuFeatures& cpu_features() noexcept;

// Was a kernel set for this ISA compiled into the library?
bool isa_compiled(Isa isa) noexcept;
// Compiled in and supported by this CPU.
bool isa_available(Isa isa) noexcept;
// The best available ISA, chosen once.
Isa best_isa() noexcept;

// The ISA new indexes and codecs use: best_isa() unless a process-wide choice was made with
// set_default_isa (to compare paths, or to pin results across machines). Existing indexes keep
// the kernels they were created with; FlatIndex::set_isa changes one index.
Isa default_isa() noexcept;
// Returns false (and changes nothing) when the ISA is not available here.
bool set_default_isa(Isa isa) noexcept;
// Back to best_isa().
void reset_default_isa() noexcept;

}  // namespace vsr

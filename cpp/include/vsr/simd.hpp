// CPU feature detection and the run-time choice of kernel set.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace vsr {

// Kernel sets. avx512vnni adds integer dot products (vpdpwssd) for int8 rows, avx512bf16 adds
// bfloat16 dot products (vdpbf16ps) for bf16 rows on top of that; both keep the avx512 kernels
// for everything else.
enum class Isa : unsigned char { scalar = 0, avx2 = 1, avx512 = 2, neon = 3, avx512vnni = 4, avx512bf16 = 5 };

// Every kernel set, in the order simd_info() lists them.
inline constexpr Isa kAllIsas[] = {Isa::scalar, Isa::avx2, Isa::avx512, Isa::avx512vnni, Isa::avx512bf16, Isa::neon};

std::string_view isa_name(Isa isa) noexcept;
std::optional<Isa> isa_from_name(std::string_view name) noexcept;
// "scalar, avx2, ..., neon": every name isa_from_name accepts, for error messages.
std::string isa_names();

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

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

}  // namespace vsr

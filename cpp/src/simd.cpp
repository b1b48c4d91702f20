#include "vsr/simd.hpp"

#include <atomic>

#include "vsr/kernels.hpp"

namespace vsr {

std::string_view isa_name(Isa isa) noexcept {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::neon: return "neon";
    case Isa::avx512vnni: return "avx512vnni";
    case Isa::avx512bf16: return "avx512bf16";
  }
  return "unknown";
}

std::optional<Isa> isa_from_name(std::string_view name) noexcept {
  if (name == "scalar") return Isa::scalar;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  if (name == "neon") return Isa::neon;
  if (name == "avx512vnni") return Isa::avx512vnni;
  if (name == "avx512bf16") return Isa::avx512bf16;
  return std::nullopt;
}

std::string isa_names() {
  std::string out;
  for (Isa isa : kAllIsas) out += (out.empty() ? "" : ", ") + std::string(isa_name(isa));
  return out;
}

namespace {

CpuFeatures detect() noexcept {
  CpuFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
#if defined(__GNUC__) || defined(__clang__)
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0).
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.f16c = __builtin_cpu_supports("f16c");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512dq = __builtin_cpu_supports("avx512dq");
  f.avx512vnni = __builtin_cpu_supports("avx512vnni");
  f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
#endif
#elif defined(__aarch64__)
  f.neon = true;  // Advanced SIMD is mandatory on AArch64.
#endif
  return f;
}

}  // namespace

const CpuFeatures& cpu_features() noexcept {
  static const CpuFeatures features = detect();
  return features;
}

bool isa_compiled(Isa isa) noexcept { return kernels_for(isa) != nullptr; }

bool isa_available(Isa isa) noexcept {
  if (!isa_compiled(isa)) return false;
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case Isa::scalar: return true;
    case Isa::avx2: return f.avx2 && f.fma && f.f16c;
    case Isa::avx512:
      // The kernels use F/BW/VL/DQ only, so Skylake-X class CPUs qualify too.
      return f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma && f.f16c;
    case Isa::avx512vnni: return isa_available(Isa::avx512) && f.avx512vnni;  // Cascade Lake, Ice Lake on
    case Isa::avx512bf16:
      // Every CPU with AVX512_BF16 (Cooper Lake, Sapphire Rapids, Zen 4) has VNNI too.
      return isa_available(Isa::avx512vnni) && f.avx512bf16;
    case Isa::neon: return f.neon;
  }
  return false;
}

Isa best_isa() noexcept {
  static const Isa best = [] {
    for (Isa isa : {Isa::avx512bf16, Isa::avx512vnni, Isa::avx512, Isa::avx2, Isa::neon}) {
      if (isa_available(isa)) return isa;
    }
    return Isa::scalar;
  }();
  return best;
}

const Kernels* kernels_for(Isa isa) noexcept {
  switch (isa) {
    case Isa::scalar: return detail::scalar_kernels();
    case Isa::avx2: return detail::avx2_kernels();
    case Isa::avx512: return detail::avx512_kernels();
    case Isa::neon: return detail::neon_kernels();
    case Isa::avx512vnni: return detail::avx512vnni_kernels();
    case Isa::avx512bf16: return detail::avx512bf16_kernels();
  }
  return nullptr;
}

namespace {
// -1: none forced; otherwise the forced Isa's value.
std::atomic<int> g_forced_isa{-1};
}  // namespace

Isa default_isa() noexcept {
  const int forced = g_forced_isa.load(std::memory_order_relaxed);
  return forced < 0 ? best_isa() : Isa(forced);
}

bool set_default_isa(Isa isa) noexcept {
  if (!isa_available(isa)) return false;
  g_forced_isa.store(int(isa), std::memory_order_relaxed);
  return true;
}

void reset_default_isa() noexcept { g_forced_isa.store(-1, std::memory_order_relaxed); }

const Kernels& default_kernels() noexcept { return *kernels_for(default_isa()); }

// Weak fallbacks: a kernel file that was not compiled leaves its table absent.
namespace detail {
#if !defined(VSR_HAVE_AVX2)
const Kernels* avx2_kernels() noexcept { return nullptr; }
#endif
#if !defined(VSR_HAVE_AVX512)
const Kernels* avx512_kernels() noexcept { return nullptr; }
#endif
#if !defined(VSR_HAVE_AVX512VNNI)
const Kernels* avx512vnni_kernels() noexcept { return nullptr; }
#endif
#if !defined(VSR_HAVE_AVX512BF16)
const Kernels* avx512bf16_kernels() noexcept { return nullptr; }
#endif
#if !defined(VSR_HAVE_NEON)
const Kernels* neon_kernels() noexcept { return nullptr; }
#endif
}  // namespace detail

}  // namespace vsr

// Every compiled-and-available SIMD kernel set agrees with the scalar reference.
#include <random>
#include <vector>

#include "test_harness.hpp"
#include "vsr/kernels.hpp"

using namespace vsr;

static std::vector<float> random_vec(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

TEST(every_available_isa_matches_scalar) {
  const Kernels* ref = kernels_for(Isa::scalar);
  CHECK(ref != nullptr);
  for (Isa isa : {Isa::avx2, Isa::avx512, Isa::neon}) {
    if (!isa_available(isa)) continue;
    const Kernels* k = kernels_for(isa);
    CHECK(k != nullptr && k->isa == isa);
    // Dimensions cover empty, sub-vector tails and multi-register bodies.
    for (std::size_t d : {1u, 3u, 7u, 8u, 15u, 16u, 17u, 31u, 33u, 64u, 100u, 384u, 1000u}) {
      auto a = random_vec(d, 1 + unsigned(d)), b = random_vec(d, 1000 + unsigned(d));
      CHECK_NEAR(k->dot_f32(a.data(), b.data(), d), ref->dot_f32(a.data(), b.data(), d), 1e-4);
      CHECK_NEAR(k->l2sq_f32(a.data(), b.data(), d), ref->l2sq_f32(a.data(), b.data(), d), 1e-4);
      std::size_t n = 13;
      auto base = random_vec(n * d, 7 + unsigned(d));
      std::vector<float> o1(n), o2(n);
      k->dot_f32_rows(a.data(), base.data(), n, d, o1.data());
      ref->dot_f32_rows(a.data(), base.data(), n, d, o2.data());
      for (std::size_t i = 0; i < n; ++i) CHECK_NEAR(o1[i], o2[i], 1e-4);
      k->l2sq_f32_rows(a.data(), base.data(), n, d, o1.data());
      ref->l2sq_f32_rows(a.data(), base.data(), n, d, o2.data());
      for (std::size_t i = 0; i < n; ++i) CHECK_NEAR(o1[i], o2[i], 1e-4);
    }
  }
}

TEST(best_isa_is_available) {
  CHECK(isa_available(best_isa()));
  CHECK(&default_kernels() == kernels_for(best_isa()));
  CHECK(isa_from_name("avx512") == Isa::avx512);
  CHECK(!isa_from_name("sse9").has_value());
}

VSR_TEST_MAIN

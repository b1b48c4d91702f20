// GPU flat index: clear errors without a GPU; on a GPU, the same answers as the CPU index.
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include "test_harness.hpp"
#include "vsr/flat_index.hpp"
#include "vsr/gpu_flat_index.hpp"

using namespace vsr;

static std::vector<float> random_vec(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

TEST(reports_unavailability_clearly) {
  CudaInfo info = cuda_info();
  if (info.device_count > 0) return;
  auto r = GpuFlatIndex::create(8, Metric::inner_product, ElementType::f32, 0);
  CHECK(!r.ok());
  CHECK(r.error().code == ErrorCode::unsupported);
  CHECK(!r.error().message.empty());
  std::printf("no CUDA device: %s\n", r.error().message.c_str());
}

TEST(matches_cpu_index_on_gpu) {
  if (cuda_info().device_count == 0) return;
  const std::size_t n = 5000, d = 96, nq = 19;
  auto base = random_vec(n * d, 3), queries = random_vec(nq * d, 4);
  for (Metric m : {Metric::inner_product, Metric::cosine, Metric::l2}) {
    std::unique_ptr<FlatIndex> cpu(FlatIndex::create(d, m).value());
    CHECK(cpu->add(base.data(), n, nullptr).ok());
    auto gpu = std::move(GpuFlatIndex::create(d, m, ElementType::f32, 0).value());
    CHECK(gpu->add(base.data(), ElementType::f32, Memory::host, n, nullptr).ok());
    for (std::size_t k : {1u, 10u, 100u, 700u}) {
      std::vector<float> s1(nq * k), s2(nq * k);
      std::vector<idx_t> i1(nq * k), i2(nq * k);
      CHECK(cpu->search(queries.data(), nq, k, s1.data(), i1.data(), {}).ok());
      CHECK(gpu->search(queries.data(), ElementType::f32, Memory::host, nq, k, s2.data(), i2.data(), Memory::host,
                        nullptr, nullptr)
                .ok());
      std::size_t mismatched = 0;
      for (std::size_t j = 0; j < nq * k; ++j) {
        CHECK_NEAR(s1[j], s2[j], 1e-3);
        mismatched += i1[j] != i2[j];
      }
      // Ids may differ only where float rounding reorders near-equal scores.
      CHECK(mismatched <= nq * k / 100);
    }
  }
}

VSR_TEST_MAIN

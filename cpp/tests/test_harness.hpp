// A tiny dependency-free test harness: TEST(name) { CHECK(...); } and main() from VSR_TEST_MAIN.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace vsr_test {

struct Case {
  const char* name;
  std::function<void()> fn;
};
inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}
inline int& failures() {
  static int n = 0;
  return n;
}
struct Register {
  Register(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

inline int run_all() {
  for (auto& c : registry()) {
    int before = failures();
    c.fn();
    std::printf("[%s] %s\n", failures() == before ? " ok " : "FAIL", c.name);
  }
  std::printf("%zu cases, %d failed checks\n", registry().size(), failures());
  return failures() == 0 ? 0 : 1;
}

// A deterministic pseudo-random vector in [-1, 1)^dim for an integer id (full rank, no ties), so a
// concurrent test can check any result without locks; `salt` gives a test its own family.
inline void hashed_vector(std::int64_t id, std::size_t dim, std::uint64_t salt, float* out) {
  for (std::size_t i = 0; i < dim; ++i) {
    std::uint64_t h = std::uint64_t(id) * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull + salt;
    h ^= h >> 31;
    h *= 0x94D049BB133111EBull;
    h ^= h >> 29;
    out[i] = float(h >> 40) / float(1ull << 23) - 1.0f;
  }
}

// Rows of hashed_vector for each id, row-major.
inline std::vector<float> hashed_rows(const std::vector<std::int64_t>& ids, std::size_t dim,
                                      std::uint64_t salt) {
  std::vector<float> x(ids.size() * dim);
  for (std::size_t i = 0; i < ids.size(); ++i) hashed_vector(ids[i], dim, salt, &x[i * dim]);
  return x;
}

// Exact inner product of q with hashed_vector(id), in double.
inline double hashed_dot(const float* q, std::int64_t id, std::size_t dim, std::uint64_t salt) {
  std::vector<float> v(dim);
  hashed_vector(id, dim, salt, v.data());
  double s = 0;
  for (std::size_t i = 0; i < dim; ++i) s += double(q[i]) * v[i];
  return s;
}

}  // namespace vsr_test

#define VSR_CAT2(a, b) a##b
#define VSR_CAT(a, b) VSR_CAT2(a, b)
#define TEST(name)                                                            \
  static void name();                                                         \
  static vsr_test::Register VSR_CAT(reg_, name)(#name, name);                 \
  static void name()

#define CHECK(cond)                                                                   \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      ++vsr_test::failures();                                                         \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
    }                                                                                 \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                                      \
  do {                                                                                             \
    double va_ = (a), vb_ = (b);                                                                   \
    if (!(std::fabs(va_ - vb_) <= (tol) * (1.0 + std::fabs(vb_)))) {                               \
      ++vsr_test::failures();                                                                      \
      std::fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s=%g vs %s=%g\n", __FILE__, __LINE__, #a,   \
                   va_, #b, vb_);                                                                  \
    }                                                                                              \
  } while (0)

#define VSR_TEST_MAIN \
  int main() { return vsr_test::run_all(); }

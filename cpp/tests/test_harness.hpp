// A tiny dependency-free test harness: TEST(name) { CHECK(...); } and main() from VSR_TEST_MAIN.
#pragma once

#include <cmath>
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

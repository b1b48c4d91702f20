// Exact search returns the brute-force answer for every metric, ISA and thread count.
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "test_harness.hpp"
#include "vsr/flat_index.hpp"

using namespace vsr;

static std::vector<float> random_vec(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Reference scores in double precision.
static double ref_score(Metric m, const float* q, const float* x, std::size_t d) {
  double dot = 0, qq = 0, xx = 0, l2 = 0;
  for (std::size_t i = 0; i < d; ++i) {
    dot += double(q[i]) * x[i];
    qq += double(q[i]) * q[i];
    xx += double(x[i]) * x[i];
    l2 += (double(q[i]) - x[i]) * (double(q[i]) - x[i]);
  }
  if (m == Metric::inner_product) return dot;
  if (m == Metric::cosine) return dot / std::sqrt(qq * xx);
  return l2;
}

TEST(matches_brute_force_all_metrics_isas_threads) {
  const std::size_t n = 1000, d = 37, nq = 23, k = 10;
  auto base = random_vec(n * d, 1), queries = random_vec(nq * d, 2);
  std::vector<idx_t> ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = idx_t(3 * i + 5);
  for (Metric m : {Metric::inner_product, Metric::cosine, Metric::l2}) {
    for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::neon}) {
      if (!isa_available(isa)) continue;
      for (int threads : {1, 3}) {
        std::unique_ptr<FlatIndex> index(FlatIndex::create(d, m).value());
        CHECK(index->set_isa(isa).ok());
        CHECK(index->add(base.data(), n, ids.data()).ok());
        CHECK(index->size() == n);
        std::vector<float> scores(nq * k);
        std::vector<idx_t> out(nq * k);
        SearchParams p;
        p.num_threads = threads;
        CHECK(index->search(queries.data(), nq, k, scores.data(), out.data(), p).ok());
        for (std::size_t qi = 0; qi < nq; ++qi) {
          std::vector<std::pair<double, idx_t>> all(n);
          for (std::size_t i = 0; i < n; ++i)
            all[i] = {ref_score(m, &queries[qi * d], &base[i * d], d), ids[i]};
          if (m == Metric::l2)
            std::sort(all.begin(), all.end());
          else
            std::sort(all.begin(), all.end(), [](auto& a, auto& b) { return a.first > b.first; });
          for (std::size_t j = 0; j < k; ++j) {
            CHECK_NEAR(scores[qi * k + j], all[j].first, 1e-4);
            // Ids agree unless the reference has a near tie at this rank.
            bool tie = j + 1 < n && std::fabs(all[j].first - all[j + 1].first) < 1e-5;
            CHECK(tie || out[qi * k + j] == all[j].second);
          }
        }
      }
    }
  }
}

TEST(fewer_vectors_than_k_pads_with_no_id) {
  std::unique_ptr<FlatIndex> index(FlatIndex::create(4, Metric::l2).value());
  float x[8] = {0, 0, 0, 0, 1, 1, 1, 1};
  CHECK(index->add(x, 2, nullptr).ok());
  float q[4] = {1, 1, 1, 1};
  float s[3];
  idx_t id[3];
  CHECK(index->search(q, 1, 3, s, id, {}).ok());
  CHECK(id[0] == 1 && id[1] == 0 && id[2] == kNoId);
  CHECK(s[0] == 0.0f && s[1] == 4.0f && std::isinf(s[2]) && s[2] > 0);
}

TEST(rejects_bad_input_and_changes_nothing) {
  std::unique_ptr<FlatIndex> index(FlatIndex::create(2, Metric::inner_product).value());
  CHECK(!FlatIndex::create(0, Metric::l2).ok());
  float x[4] = {1, 2, 3, 4};
  idx_t dup[2] = {7, 7};
  CHECK(!index->add(x, 2, dup).ok());
  idx_t neg[2] = {1, -3};
  CHECK(!index->add(x, 2, neg).ok());
  float nan_x[2] = {NAN, 0};
  CHECK(!index->add(nan_x, 1, nullptr).ok());
  CHECK(index->size() == 0);
  CHECK(index->add(x, 2, nullptr).ok());
  idx_t again[1] = {1};
  CHECK(!index->add(x, 1, again).ok());
  CHECK(index->size() == 2);
  float s[1];
  idx_t id[1];
  CHECK(!index->search(x, 1, 0, s, id, {}).ok());
  idx_t unknown[1] = {42};
  auto st = index->score_ids(x, unknown, 1, s);
  CHECK(!st.ok() && st.error().code == ErrorCode::not_found);
}

TEST(filters_allow_and_deny) {
  std::unique_ptr<FlatIndex> index(FlatIndex::create(1, Metric::inner_product).value());
  float x[5] = {1, 2, 3, 4, 5};
  CHECK(index->add(x, 5, nullptr).ok());
  float q[1] = {1};
  IdFilter deny{IdFilter::Mode::deny, {4, 3}};
  SearchParams p;
  p.filter = &deny;
  float s[2];
  idx_t id[2];
  CHECK(index->search(q, 1, 2, s, id, p).ok());
  CHECK(id[0] == 2 && id[1] == 1);
  IdFilter allow{IdFilter::Mode::allow, {0}};
  p.filter = &allow;
  CHECK(index->search(q, 1, 2, s, id, p).ok());
  CHECK(id[0] == 0 && id[1] == kNoId);
}

VSR_TEST_MAIN

// Exact search returns the brute-force answer for every metric, storage, ISA, thread count and
// code path; remove, filters, range search and persistence keep that true.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <memory>
#include <random>
#include <set>
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

// Brute-force top-k ids of one query, best first.
static std::vector<std::pair<double, idx_t>> brute(Metric m, const float* q, const std::vector<float>& base,
                                                   const std::vector<idx_t>& ids, std::size_t d) {
  std::vector<std::pair<double, idx_t>> all(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) all[i] = {ref_score(m, q, &base[i * d], d), ids[i]};
  if (m == Metric::l2)
    std::sort(all.begin(), all.end());
  else
    std::sort(all.begin(), all.end(), [](auto& a, auto& b) { return a.first > b.first; });
  return all;
}

static std::unique_ptr<FlatIndex> make_index(std::size_t d, Metric m, Storage s = Storage::f32, std::size_t rerank = 0) {
  FlatOptions o;
  o.metric = m;
  o.storage = s;
  o.rerank = rerank;
  return FlatIndex::make(d, o).value();
}

// Checks exact results of `index` against brute force for nq queries.
static void check_exact(const FlatIndex& index, Metric m, const std::vector<float>& base, const std::vector<idx_t>& ids,
                        const std::vector<float>& queries, std::size_t nq, std::size_t k, int threads) {
  const std::size_t d = index.dim();
  std::vector<float> scores(nq * k);
  std::vector<idx_t> out(nq * k);
  SearchParams p;
  p.num_threads = threads;
  CHECK(index.search(queries.data(), nq, k, scores.data(), out.data(), p).ok());
  for (std::size_t qi = 0; qi < nq; ++qi) {
    auto all = brute(m, &queries[qi * d], base, ids, d);
    for (std::size_t j = 0; j < k; ++j) {
      CHECK_NEAR(scores[qi * k + j], all[j].first, 1e-4);
      // Ids agree unless the reference has a near tie at this rank.
      bool tie = (j + 1 < all.size() && std::fabs(all[j].first - all[j + 1].first) < 1e-5) ||
                 (j > 0 && std::fabs(all[j].first - all[j - 1].first) < 1e-5);
      CHECK(tie || out[qi * k + j] == all[j].second);
    }
  }
}

TEST(matches_brute_force_all_metrics_isas_threads_paths) {
  const std::size_t d = 37, k = 10;
  for (std::size_t n : {1000u, 9000u}) {  // 9000 rows with one query takes the row-parallel path
    auto base = random_vec(n * d, 1), queries = random_vec(41 * d, 2);
    std::vector<idx_t> ids(n);
    for (std::size_t i = 0; i < n; ++i) ids[i] = idx_t(3 * i + 5);
    for (Metric m : {Metric::inner_product, Metric::cosine, Metric::l2}) {
      for (Isa isa : kAllIsas) {
        if (!isa_available(isa)) continue;
        auto index = make_index(d, m);
        CHECK(index->set_isa(isa).ok() && index->isa() == isa);
        CHECK(index->add(base.data(), n, ids.data()).ok());
        CHECK(index->size() == n);
        for (int threads : {1, 3}) {
          check_exact(*index, m, base, ids, queries, 1, k, threads);
          if (n == 1000) check_exact(*index, m, base, ids, queries, 41, k, threads);
        }
      }
    }
  }
}

TEST(compressed_storage_scores_and_rerank_is_exact) {
  const std::size_t n = 2000, d = 48, nq = 20, k = 10;
  auto base = random_vec(n * d, 11), queries = random_vec(nq * d, 12);
  std::vector<idx_t> ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = idx_t(i);
  for (Metric m : {Metric::inner_product, Metric::cosine, Metric::l2}) {
    for (Storage s : {Storage::f16, Storage::bf16, Storage::int8}) {
      // Re-ranked results carry exact float32 scores of the returned ids.
      auto index = make_index(d, m, s, 8);
      CHECK(index->add(base.data(), n, nullptr).ok());
      std::vector<float> scores(nq * k);
      std::vector<idx_t> out(nq * k);
      CHECK(index->search(queries.data(), nq, k, scores.data(), out.data(), {}).ok());
      std::size_t hits = 0;
      for (std::size_t qi = 0; qi < nq; ++qi) {
        auto all = brute(m, &queries[qi * d], base, ids, d);
        std::set<idx_t> truth;
        for (std::size_t j = 0; j < k; ++j) truth.insert(all[j].second);
        for (std::size_t j = 0; j < k; ++j) {
          idx_t id = out[qi * k + j];
          hits += truth.count(id);
          CHECK_NEAR(scores[qi * k + j], ref_score(m, &queries[qi * d], &base[std::size_t(id) * d], d), 1e-4);
          if (j > 0) CHECK(m == Metric::l2 ? scores[qi * k + j] >= scores[qi * k + j - 1] : scores[qi * k + j] <= scores[qi * k + j - 1]);
        }
      }
      CHECK(double(hits) / double(nq * k) >= 0.97);
      // Without re-rank, scores are those of the stored (decoded) rows.
      auto plain = make_index(d, m, s, 0);
      CHECK(plain->add(base.data(), n, nullptr).ok());
      CHECK(plain->search(queries.data(), nq, k, scores.data(), out.data(), {}).ok());
      for (std::size_t qi = 0; qi < nq; ++qi) {
        float got;
        CHECK(plain->score_ids(&queries[qi * d], &out[qi * k], 1, &got).ok());
        CHECK_NEAR(scores[qi * k], got, 1e-4);
        CHECK_NEAR(got, ref_score(m, &queries[qi * d], &base[std::size_t(out[qi * k]) * d], d), s == Storage::f16 ? 1e-2 : 6e-2);
      }
    }
  }
}

TEST(k_larger_than_size_is_an_error_and_filters_pad_with_no_id) {
  auto index = make_index(4, Metric::l2);
  float x[8] = {0, 0, 0, 0, 1, 1, 1, 1};
  CHECK(index->add(x, 2, nullptr).ok());
  float q[4] = {1, 1, 1, 1};
  float s[3];
  idx_t id[3];
  auto st = index->search(q, 1, 3, s, id, {});
  CHECK(!st.ok() && st.error().message.find("exceeds") != std::string::npos);
  IdFilter deny{IdFilter::Mode::deny, {0}};
  SearchParams p;
  p.filter = &deny;
  CHECK(index->search(q, 1, 2, s, id, p).ok());
  CHECK(id[0] == 1 && id[1] == kNoId);
  CHECK(s[0] == 0.0f && std::isinf(s[1]) && s[1] > 0);
}

TEST(rejects_bad_input_and_changes_nothing) {
  auto index = make_index(2, Metric::inner_product);
  CHECK(!FlatIndex::create(0, Metric::l2).ok());
  FlatOptions bad;
  bad.rerank = 2;  // f32 + rerank
  CHECK(!FlatIndex::make(2, bad).ok());
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
  CHECK(!index->search(nan_x, 1, 1, s, id, {}).ok());
  idx_t unknown[1] = {42};
  auto st = index->score_ids(x, unknown, 1, s);
  CHECK(!st.ok() && st.error().code == ErrorCode::not_found);
  st = index->remove(unknown, 1);
  CHECK(!st.ok() && st.error().code == ErrorCode::not_found && index->size() == 2);
  idx_t twice[2] = {0, 0};
  CHECK(!index->remove(twice, 2).ok() && index->size() == 2);
  auto cos = make_index(2, Metric::cosine);
  float zero[2] = {0, 0};
  CHECK(!cos->add(zero, 1, nullptr).ok());
  auto f16 = make_index(2, Metric::inner_product, Storage::f16);
  float big[2] = {1e6f, 0};
  CHECK(!f16->add(big, 1, nullptr).ok() && f16->size() == 0);
}

TEST(filters_allow_and_deny_both_paths) {
  const std::size_t n = 500, d = 8;
  auto base = random_vec(n * d, 5);
  for (Metric m : {Metric::inner_product, Metric::l2}) {
    auto index = make_index(d, m);
    CHECK(index->add(base.data(), n, nullptr).ok());
    std::vector<idx_t> all_ids(n);
    for (std::size_t i = 0; i < n; ++i) all_ids[i] = idx_t(i);
    // Small allow-list (gathered rows) and large allow-list (scan + check) give brute-force answers.
    for (std::size_t allowed : {5u, 300u}) {
      IdFilter allow{IdFilter::Mode::allow, {}};
      std::vector<float> sub;
      std::vector<idx_t> sub_ids;
      for (std::size_t i = 0; i < allowed; ++i) {
        idx_t id = idx_t((i * 37) % n);
        allow.ids.insert(id);
      }
      allow.ids.insert(100000);  // unknown ids in an allow-list are simply never found
      for (idx_t id : allow.ids) {
        if (id >= idx_t(n)) continue;
        sub.insert(sub.end(), &base[std::size_t(id) * d], &base[std::size_t(id) * d] + d);
        sub_ids.push_back(id);
      }
      SearchParams p;
      p.filter = &allow;
      std::vector<float> q = random_vec(d, 77);
      float s[5];
      idx_t out[5];
      CHECK(index->search(q.data(), 1, 5, s, out, p).ok());
      auto ref = brute(m, q.data(), sub, sub_ids, d);
      for (std::size_t j = 0; j < 5; ++j) CHECK(out[j] == ref[j].second);
      // Deny the top results: the next ones appear.
      IdFilter deny{IdFilter::Mode::deny, {ref[0].second, ref[1].second}};
      p.filter = &deny;
      auto full = brute(m, q.data(), base, all_ids, d);
      CHECK(index->search(q.data(), 1, 5, s, out, p).ok());
      std::size_t j = 0;
      for (auto& [score, id] : full) {
        if (deny.ids.count(id)) continue;
        if (j == 5) break;
        CHECK(out[j] == id);
        ++j;
      }
    }
  }
}

TEST(remove_really_removes_and_matches_a_fresh_index) {
  const std::size_t n = 300, d = 16;
  auto base = random_vec(n * d, 8);
  for (Storage s : {Storage::f32, Storage::int8}) {
    FlatOptions o;
    o.metric = Metric::l2;
    o.storage = s;
    o.rerank = s == Storage::f32 ? 0 : 4;
    auto index = FlatIndex::make(d, o).value();
    CHECK(index->add(base.data(), n, nullptr).ok());
    std::vector<idx_t> gone;
    for (std::size_t i = 0; i < n; i += 3) gone.push_back(idx_t(i));
    gone.push_back(idx_t(n - 1));  // the last row too
    CHECK(index->remove(gone.data(), gone.size()).ok());
    CHECK(index->size() == n - gone.size());
    std::set<idx_t> gone_set(gone.begin(), gone.end());
    auto fresh = FlatIndex::make(d, o).value();
    for (std::size_t i = 0; i < n; ++i) {
      idx_t id = idx_t(i);
      if (!gone_set.count(id)) CHECK(fresh->add(&base[i * d], 1, &id).ok());
    }
    auto q = random_vec(7 * d, 9);
    const std::size_t k = fresh->size();  // everything: the full ranking must agree
    std::vector<float> s1(7 * k), s2(7 * k);
    std::vector<idx_t> i1(7 * k), i2(7 * k);
    CHECK(index->search(q.data(), 7, k, s1.data(), i1.data(), {}).ok());
    CHECK(fresh->search(q.data(), 7, k, s2.data(), i2.data(), {}).ok());
    CHECK(i1 == i2);
    for (idx_t id : i1) CHECK(!gone_set.count(id));
    float sc;
    CHECK(index->score_ids(q.data(), &gone[0], 1, &sc).error().code == ErrorCode::not_found);
    // Removed ids can be added again.
    CHECK(index->add(&base[0], 1, &gone[0]).ok());
    CHECK(index->score_ids(q.data(), &gone[0], 1, &sc).ok());
  }
}

TEST(range_search_matches_brute_force) {
  const std::size_t n = 800, d = 12, nq = 5;
  auto base = random_vec(n * d, 21), q = random_vec(nq * d, 22);
  std::vector<idx_t> ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = idx_t(i);
  for (Metric m : {Metric::inner_product, Metric::cosine, Metric::l2}) {
    auto index = make_index(d, m);
    CHECK(index->add(base.data(), n, nullptr).ok());
    const float radius = m == Metric::l2 ? 14.0f : (m == Metric::cosine ? 0.5f : 4.0f);
    RangeResult r;
    CHECK(index->range_search(q.data(), nq, radius, &r, {}).ok());
    CHECK(r.lims.size() == nq + 1);
    std::size_t total = 0;
    for (std::size_t qi = 0; qi < nq; ++qi) {
      auto all = brute(m, &q[qi * d], base, ids, d);
      std::vector<idx_t> expect;
      for (auto& [s, id] : all)
        if (m == Metric::l2 ? s <= radius : s >= radius) expect.push_back(id);
      std::vector<idx_t> got(r.ids.begin() + long(r.lims[qi]), r.ids.begin() + long(r.lims[qi + 1]));
      CHECK(got == expect);
      total += got.size();
    }
    CHECK(total > 0 && total < nq * n);
  }
}

TEST(save_load_round_trip_mmap_and_copy_on_write) {
  const std::size_t n = 400, d = 20;
  auto base = random_vec(n * d, 31), q = random_vec(3 * d, 32);
  const std::string path = "/tmp/vsr_test_flat_" + std::to_string(::getpid()) + ".vsr";
  for (Metric m : {Metric::inner_product, Metric::l2}) {
    for (Storage s : {Storage::f32, Storage::bf16, Storage::int8}) {
      FlatOptions o;
      o.metric = m;
      o.storage = s;
      o.rerank = s == Storage::int8 ? 3 : 0;
      auto index = FlatIndex::make(d, o).value();
      std::vector<idx_t> ids(n);
      for (std::size_t i = 0; i < n; ++i) ids[i] = idx_t(1000 + 7 * i);
      CHECK(index->add(base.data(), n, ids.data()).ok());
      CHECK(index->remove(&ids[3], 2).ok());
      CHECK(index->save(path).ok());
      const std::size_t k = 15;
      std::vector<float> s0(3 * k), s1(3 * k);
      std::vector<idx_t> i0(3 * k), i1(3 * k);
      CHECK(index->search(q.data(), 3, k, s0.data(), i0.data(), {}).ok());
      for (bool use_mmap : {true, false}) {
        auto loaded = FlatIndex::load(path, use_mmap, true);
        CHECK(loaded.ok());
        if (!loaded.ok()) continue;
        auto& li = *loaded.value();
        CHECK(li.size() == n - 2 && li.metric() == m && li.storage() == s && li.rerank() == o.rerank);
        CHECK(li.is_mapped() == use_mmap);
        CHECK(li.search(q.data(), 3, k, s1.data(), i1.data(), {}).ok());
        CHECK(i0 == i1 && s0 == s1);
        // Writes after loading copy the mapped data; the file is untouched.
        idx_t fresh_id = 5;
        CHECK(li.add(base.data(), 1, &fresh_id).ok() && !li.is_mapped());
        CHECK(li.remove(&ids[10], 1).ok());
        auto again = FlatIndex::load(path, true, true);
        CHECK(again.ok() && again.value()->size() == n - 2);
        // Auto ids continue after the largest id ever added.
        CHECK(li.add(base.data(), 1, nullptr).ok());
        float sc;
        idx_t next = ids[n - 1] + 1;
        CHECK(li.score_ids(q.data(), &next, 1, &sc).ok());
      }
    }
  }
  std::remove(path.c_str());
}

TEST(generation_max_norm_stats_and_batch_scores) {
  auto index = make_index(2, Metric::inner_product, Storage::int8, 2);
  CHECK(index->generation() == 0 && !index->exact_search());
  float x[4] = {3, 4, 0.6f, 0.8f};
  CHECK(index->add(x, 2, nullptr).ok());
  CHECK(index->generation() == 1);
  CHECK_NEAR(index->max_norm().value(), 5.0, 1e-5);
  idx_t zero = 0;
  CHECK(index->remove(&zero, 1).ok() && index->generation() == 2);
  CHECK_NEAR(index->max_norm().value(), 5.0, 1e-5);  // never decreases
  CHECK(index->add(x, 1, &zero).ok());
  float q[4] = {1, 0, 0, 1};
  idx_t ids[2] = {0, 1};
  float s[4];
  CHECK(index->score_ids_batch(q, 2, ids, 2, s).ok());
  CHECK_NEAR(s[0], 3.0, 1e-6);
  CHECK_NEAR(s[1], 0.6, 1e-6);
  CHECK_NEAR(s[2], 4.0, 1e-6);
  CHECK_NEAR(s[3], 0.8, 1e-6);
  SearchStats stats;
  SearchParams p;
  p.stats = &stats;
  float out[2];
  idx_t out_id[2];
  CHECK(index->search(q, 2, 1, out, out_id, p).ok());
  CHECK(stats.distances.load() == 2 * (2 + 2));  // 2 queries x (2 scanned + 2 re-ranked)
  CHECK(make_index(2, Metric::l2)->exact_search());
  CHECK(!make_index(2, Metric::l2, Storage::bf16)->exact_search());
  SearchStats l2_stats;
  p.stats = &l2_stats;
  auto l2 = make_index(2, Metric::l2);
  CHECK(l2->add(x, 2, nullptr).ok());
  CHECK(l2->search(q, 1, 1, out, out_id, p).ok());
  CHECK(l2_stats.distances.load() == 2 + 1);  // scanned rows + direct l2 re-scoring of k
}

TEST(automatic_ids_are_consecutive_and_the_largest_id_is_bounded) {
  auto index = make_index(4, Metric::inner_product);
  auto x = random_vec(4 * 4, 21);
  CHECK(index->add(x.data(), 4, nullptr).ok());
  CHECK(index->add(x.data(), 4, nullptr).ok());
  std::vector<float> s(8);
  std::vector<idx_t> ids(8);
  CHECK(index->search(x.data(), 1, 8, s.data(), ids.data(), {}).ok());
  std::sort(ids.begin(), ids.end());
  CHECK(ids == std::vector<idx_t>({0, 1, 2, 3, 4, 5, 6, 7}));
  // After explicit ids, automatic ones continue after the largest.
  idx_t big = 100;
  CHECK(index->add(x.data(), 1, &big).ok());
  CHECK(index->add(x.data(), 2, nullptr).ok());
  float rows[8];
  const idx_t next[2] = {101, 102};
  CHECK(index->reconstruct(next, 2, rows).ok());
  // 2^63 - 1 would leave no room for the next automatic id: rejected, nothing added.
  const idx_t top = std::numeric_limits<idx_t>::max();
  auto st = index->add(x.data(), 1, &top);
  CHECK(!st.ok() && st.error().code == ErrorCode::invalid_argument);
  CHECK(index->size() == 11);
  const idx_t last = top - 1;
  CHECK(index->add(x.data(), 1, &last).ok());
  st = index->add(x.data(), 1, nullptr);  // no automatic id is left
  CHECK(!st.ok() && index->size() == 12);
  const std::string path = "/tmp/vsr_test_ids_" + std::to_string(::getpid()) + ".vsr";
  CHECK(index->save(path).ok());
  auto loaded = FlatIndex::load(path, false, true);
  CHECK(loaded.ok() && loaded.value()->size() == 12);
  std::remove(path.c_str());
}

TEST(vectors_and_queries_too_large_for_float32_scores_are_rejected) {
  for (Metric m : {Metric::inner_product, Metric::l2}) {
    auto index = make_index(4, m, Storage::f32);
    const float huge[4] = {1e20f, 1e20f, 1e20f, 1e20f};
    auto st = index->add(huge, 1, nullptr);
    CHECK(!st.ok() && st.error().code == ErrorCode::invalid_argument && st.error().message.find("norm") != std::string::npos);
    CHECK(index->size() == 0);
    const float large[4] = {1e17f, -1e17f, 1e17f, 0};
    CHECK(index->add(large, 1, nullptr).ok());
    float s[1];
    idx_t id[1];
    CHECK(!index->search(huge, 1, 1, s, id, {}).ok());
    CHECK(index->search(large, 1, 1, s, id, {}).ok() && std::isfinite(s[0]));
    const std::string path = "/tmp/vsr_test_norm_" + std::to_string(::getpid()) + ".vsr";
    CHECK(index->save(path).ok());
    CHECK(FlatIndex::load(path, false, true).ok());
    std::remove(path.c_str());
  }
  // Cosine normalises, so any finite non-zero vector is fine.
  auto cos = make_index(4, Metric::cosine);
  const float huge[4] = {1e20f, 1e20f, 1e20f, 1e20f};
  CHECK(cos->add(huge, 1, nullptr).ok());
}

TEST(a_mapped_index_whose_file_changes_reports_it_instead_of_crashing) {
  auto index = make_index(8, Metric::inner_product);
  auto x = random_vec(300 * 8, 23);
  CHECK(index->add(x.data(), 300, nullptr).ok());
  const std::string path = "/tmp/vsr_test_mapped_" + std::to_string(::getpid()) + ".vsr";
  CHECK(index->save(path).ok());
  auto mapped = FlatIndex::load(path, true, true).value();
  CHECK(mapped->is_mapped());
  float s[3];
  idx_t id[3];
  CHECK(mapped->search(x.data(), 1, 3, s, id, {}).ok());
  CHECK(::truncate(path.c_str(), 128) == 0);  // reading the mapping now would raise SIGBUS
  auto st = mapped->search(x.data(), 1, 3, s, id, {});
  CHECK(!st.ok() && st.error().message.find("changed") != std::string::npos);
  CHECK(!mapped->score_ids(x.data(), id, 1, s).ok());
  CHECK(!mapped->reconstruct(id, 1, s).ok());
  CHECK(!mapped->add(x.data(), 1, nullptr).ok());
  CHECK(!mapped->save(path + ".copy").ok());
  std::remove(path.c_str());
}

VSR_TEST_MAIN

TEST(reconstruct_returns_stored_rows_in_order_for_every_storage) {
  const std::size_t n = 300, d = 19;
  auto base = random_vec(n * d, 41);
  std::vector<idx_t> ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = idx_t(50 + 3 * i);
  const std::string path = "/tmp/vsr_test_flat_rec_" + std::to_string(::getpid()) + ".vsr";
  // Largest decode error per storage, relative to the row's largest magnitude (0 = bit exact).
  const std::vector<std::pair<Storage, double>> tolerances = {
      {Storage::f32, 0.0}, {Storage::f16, 1e-3}, {Storage::bf16, 8e-3}, {Storage::int8, 1.0 / 127}};
  for (Metric m : {Metric::inner_product, Metric::cosine, Metric::l2})
    for (auto [s, tol] : tolerances)
      for (std::size_t rerank : {std::size_t(0), std::size_t(2)}) {
        if (s == Storage::f32 && rerank > 0) continue;
        auto index = make_index(d, m, s, rerank);
        CHECK(index->add(base.data(), n, ids.data()).ok());
        CHECK(index->remove(&ids[7], 5).ok());  // moves the last rows into the holes
        // Expected rows: as added, normalised for cosine.
        auto expected = [&](std::size_t i) {
          std::vector<float> x(base.begin() + i * d, base.begin() + (i + 1) * d);
          if (m == Metric::cosine) {
            double nn = 0;
            for (float v : x) nn += double(v) * v;
            for (float& v : x) v = float(v / std::sqrt(nn));
          }
          return x;
        };
        const std::vector<std::size_t> pick = {n - 1, 0, 12, n - 1, 6, 150};  // repeats allowed
        std::vector<idx_t> want(pick.size());
        for (std::size_t j = 0; j < pick.size(); ++j) want[j] = ids[pick[j]];
        auto check_rows = [&](const FlatIndex& idx) {
          std::vector<float> out(pick.size() * d, -99.0f);
          CHECK(idx.reconstruct(want.data(), want.size(), out.data()).ok());
          const bool exact = s == Storage::f32 || rerank > 0;
          for (std::size_t j = 0; j < pick.size(); ++j) {
            auto x = expected(pick[j]);
            float mx = 0;
            for (float v : x) mx = std::max(mx, std::fabs(v));
            for (std::size_t c = 0; c < d; ++c) {
              // Cosine rows are normalised once, in float32, by the index: compare within rounding.
              const double allowed = exact ? (m == Metric::cosine ? 1e-6 : 0.0) : tol * mx;
              CHECK(std::fabs(out[j * d + c] - x[c]) <= allowed);
            }
          }
        };
        check_rows(*index);
        // Removed and never-added ids are errors naming them.
        std::vector<idx_t> bad = {ids[0], ids[8], 7};
        std::vector<float> out(3 * d);
        Status st = index->reconstruct(bad.data(), 3, out.data());
        CHECK(!st.ok() && st.error().code == ErrorCode::not_found);
        CHECK(!st.ok() && st.error().message == "2 ids are not in the index: " + std::to_string(ids[8]) + ", 7");
        CHECK(index->reconstruct(want.data(), 0, nullptr).ok());
        CHECK(index->save(path).ok());
        auto loaded = FlatIndex::load(path, true, true);
        CHECK(loaded.ok());
        if (!loaded.ok()) continue;
        check_rows(*loaded.value());
        CHECK(loaded.value()->is_mapped());  // reading rows does not copy the index
      }
  std::remove(path.c_str());
}

// Every compiled-and-available kernel set agrees with a double-precision reference over the
// decoded rows, for every storage kind, dimension tail and register-tile remainder.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "test_harness.hpp"
#include "vsr/codec.hpp"
#include "vsr/kernels.hpp"
#include "vsr/mapped_array.hpp"

using namespace vsr;

static std::vector<float> random_vec(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

static std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : kAllIsas)
    if (isa_available(isa)) out.push_back(isa);
  return out;
}

static const Storage kStorages[] = {Storage::f32, Storage::f16, Storage::bf16, Storage::int8};

// Relative error (in CHECK_NEAR's units) the single-query scan may add by converting the query:
// int8 rows on VNNI take the query as int16 (half a step of max|q| / 32767 per dimension), bf16
// rows on BF16 take it as two bfloat16 parts (2^-17 |q_i| left out). Zero elsewhere.
static double query_rounding(Isa isa, Storage s, const float* q, const float* x, std::size_t d) {
  double qmax = 0, abs_x = 0, abs_qx = 0;
  for (std::size_t i = 0; i < d; ++i) {
    qmax = std::max(qmax, double(std::fabs(q[i])));
    abs_x += std::fabs(x[i]);
    abs_qx += std::fabs(double(q[i]) * x[i]);
  }
  const bool vnni = isa == Isa::avx512vnni || isa == Isa::avx512bf16;
  if (s == Storage::int8 && vnni) return qmax / 65534.0 * abs_x + 1e-6 * abs_qx;
  if (s == Storage::bf16 && isa == Isa::avx512bf16) return 0x1p-17 * abs_qx + 1e-6 * abs_qx;
  return 0;
}

TEST(f32_table_entries_match_reference) {
  for (Isa isa : available_isas()) {
    const Kernels* k = kernels_for(isa);
    CHECK(k != nullptr && k->isa == isa);
    for (std::size_t d : {1u, 3u, 7u, 8u, 15u, 16u, 17u, 31u, 33u, 64u, 100u, 384u, 1000u}) {
      auto a = random_vec(d, 1 + unsigned(d)), b = random_vec(d, 1000 + unsigned(d));
      double dot = 0, l2 = 0;
      for (std::size_t i = 0; i < d; ++i) {
        dot += double(a[i]) * b[i];
        l2 += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
      }
      CHECK_NEAR(k->dot_f32(a.data(), b.data(), d), dot, 1e-4);
      CHECK_NEAR(k->l2sq_f32(a.data(), b.data(), d), l2, 1e-4);
      std::size_t n = 13;
      auto base = random_vec(n * d, 7 + unsigned(d));
      std::vector<float> o(n);
      k->dot_f32_rows(a.data(), base.data(), n, d, o.data());
      for (std::size_t i = 0; i < n; ++i) CHECK_NEAR(o[i], k->dot_f32(a.data(), &base[i * d], d), 1e-4);
      k->l2sq_f32_rows(a.data(), base.data(), n, d, o.data());
      for (std::size_t i = 0; i < n; ++i) CHECK_NEAR(o[i], k->l2sq_f32(a.data(), &base[i * d], d), 1e-4);
    }
  }
}

TEST(storage_kernels_match_decoded_reference_every_isa) {
  for (Isa isa : available_isas()) {
    for (Storage s : kStorages) {
      // Sizes cover tails of every vector width and every tile remainder (nq % 4, n % 8).
      for (std::size_t d : {1u, 5u, 16u, 19u, 48u, 130u, 384u}) {
        Codec codec(s, d, isa);
        CHECK(codec.isa() == isa);
        const std::size_t n = 11, nq = 7;
        auto x = random_vec(n * d, 3 + unsigned(d)), q = random_vec(nq * d, 9 + unsigned(d));
        std::vector<std::uint8_t> rows(n * codec.row_bytes());
        CHECK(codec.encode(x.data(), n, rows.data()).ok());
        std::vector<float> decoded(n * d);
        for (std::size_t r = 0; r < n; ++r) codec.decode(&rows[r * codec.row_bytes()], &decoded[r * d]);
        std::vector<float> block(nq * (n + 2));
        codec.dot_block(q.data(), nq, rows.data(), n, block.data(), n + 2);
        for (std::size_t a = 0; a < nq; ++a) {
          for (std::size_t r = 0; r < n; ++r) {
            double dot = 0, l2 = 0, sq = 0;
            for (std::size_t i = 0; i < d; ++i) {
              double xv = decoded[r * d + i], qv = q[a * d + i];
              dot += qv * xv;
              l2 += (qv - xv) * (qv - xv);
              sq += xv * xv;
            }
            const std::uint8_t* row = &rows[r * codec.row_bytes()];
            CHECK_NEAR(codec.dot(&q[a * d], row), dot, 1e-4);
            CHECK_NEAR(codec.l2sq(&q[a * d], row), l2, 1e-4);
            CHECK_NEAR(block[a * (n + 2) + r], dot, 1e-4 + query_rounding(isa, s, &q[a * d], &decoded[r * d], d));
            CHECK_NEAR(codec.sqnorm(row), sq, 1e-5);
          }
        }
      }
    }
  }
}

// The single-query scan (nq = 1: the ISA's own row kernel, e.g. vpdpwssd or vdpbf16ps) agrees
// with the scalar path within the query-conversion bound, across vector tails, row counts that
// are not a multiple of the four-row reduction, and dimensions longer than one query chunk.
TEST(single_query_scan_matches_scalar_every_isa) {
  for (Isa isa : available_isas()) {
    for (Storage s : kStorages) {
      for (std::size_t d : {1u, 31u, 32u, 33u, 100u, 384u, 2048u, 2049u, 4133u}) {
        Codec codec(s, d, isa), scalar(s, d, Isa::scalar);
        const std::size_t n = 13;
        auto x = random_vec(n * d, 70 + unsigned(d)), q = random_vec(d, 80 + unsigned(d));
        std::vector<std::uint8_t> rows(n * codec.row_bytes());
        CHECK(codec.encode(x.data(), n, rows.data()).ok());
        std::vector<float> got(n + 1, -7.0f), ref(n);
        codec.dot_block(q.data(), 1, rows.data(), n, got.data(), n);
        scalar.dot_block(q.data(), 1, rows.data(), n, ref.data(), n);
        std::vector<float> decoded(d);
        for (std::size_t r = 0; r < n; ++r) {
          codec.decode(&rows[r * codec.row_bytes()], decoded.data());
          CHECK_NEAR(got[r], ref[r], 1e-4 + query_rounding(isa, s, q.data(), decoded.data(), d));
        }
        CHECK(got[n] == -7.0f);  // nothing written past n
        // The same rows gathered by slot (a graph walk): any order, repeats, n % 4 != 0.
        const std::uint32_t slots[] = {12, 0, 5, 5, 3, 11, 7, 1, 9};
        const std::size_t ns = sizeof slots / sizeof slots[0];
        std::vector<float> gathered(ns + 1, -7.0f);
        const StorageKernels& sk = kernels_for(isa)->storage[std::size_t(s)];
        sk.dot_gather(q.data(), rows.data(), slots, ns, d, gathered.data());
        for (std::size_t j = 0; j < ns; ++j) {
          codec.decode(&rows[slots[j] * codec.row_bytes()], decoded.data());
          CHECK_NEAR(gathered[j], ref[slots[j]], 1e-4 + query_rounding(isa, s, q.data(), decoded.data(), d));
        }
        CHECK(gathered[ns] == -7.0f);
        // A query prepared once scores exactly as dot_gather, which converts it per call.
        std::vector<std::uint8_t, CacheAlignedAllocator<std::uint8_t>> prepared(sk.prepared_bytes(d) + 1, 0xA5);
        sk.prepare(q.data(), d, prepared.data());
        CHECK(prepared.back() == 0xA5);  // nothing written past prepared_bytes(d)
        std::vector<float> from_prepared(ns + 1, -7.0f);
        sk.dot_gather_prepared(prepared.data(), rows.data(), slots, ns, d, from_prepared.data());
        for (std::size_t j = 0; j <= ns; ++j) CHECK(from_prepared[j] == gathered[j]);
        sk.l2sq_gather(q.data(), rows.data(), slots, ns, d, gathered.data());
        for (std::size_t j = 0; j < ns; ++j)
          CHECK_NEAR(gathered[j], scalar.l2sq(q.data(), &rows[slots[j] * codec.row_bytes()]), 1e-4);
        CHECK(gathered[ns] == -7.0f);
      }
      // A zero query scores zero against every row.
      Codec codec(s, 40, isa);
      std::vector<float> x = random_vec(5 * 40, 5), zero(40, 0.0f), out(5, 1.0f);
      std::vector<std::uint8_t> rows(5 * codec.row_bytes());
      CHECK(codec.encode(x.data(), 5, rows.data()).ok());
      codec.dot_block(zero.data(), 1, rows.data(), 5, out.data(), 5);
      for (float v : out) CHECK(v == 0.0f);
      const StorageKernels& sk = kernels_for(isa)->storage[std::size_t(s)];
      std::vector<std::uint8_t, CacheAlignedAllocator<std::uint8_t>> prepared(sk.prepared_bytes(40));
      sk.prepare(zero.data(), 40, prepared.data());
      const std::uint32_t slots[] = {4, 0, 2};
      std::fill(out.begin(), out.end(), 1.0f);
      sk.dot_gather_prepared(prepared.data(), rows.data(), slots, 3, 40, out.data());
      for (std::size_t j = 0; j < 3; ++j) CHECK(out[j] == 0.0f);
    }
  }
}

TEST(packed_gemm_matches_decoded_reference_every_isa) {
  for (Isa isa : available_isas()) {
    const Kernels* k = kernels_for(isa);
    CHECK(k->panel_rows > 0);
    for (Storage s : kStorages) {
      // n covers partial panels, nq covers partial query tiles of every ISA.
      for (std::size_t d : {1u, 7u, 64u, 131u}) {
        Codec codec(s, d, isa);
        const std::size_t n = 2 * k->panel_rows + 3, nq = 27;
        auto x = random_vec(n * d, 50 + unsigned(d)), q = random_vec(nq * d, 60 + unsigned(d));
        std::vector<std::uint8_t> rows(n * codec.row_bytes());
        CHECK(codec.encode(x.data(), n, rows.data()).ok());
        std::vector<float> packed(packed_floats(*k, n, d), -3.0f);
        k->storage[std::size_t(s)].pack(rows.data(), n, d, packed.data());
        {
          // The layout itself: panel p holds rows p * P.. dimension-major, padding rows zero.
          const std::size_t P = k->panel_rows;
          std::vector<float> row(d);
          for (std::size_t r = 0; r < packed.size() / d / P * P; ++r) {
            if (r < n) codec.decode(&rows[r * codec.row_bytes()], row.data());
            for (std::size_t i = 0; i < d; ++i) {
              const float want = r < n ? row[i] : 0.0f;
              CHECK_NEAR(packed[(r / P) * P * d + i * P + r % P], want, 1e-6 * (1 + std::abs(want)));
            }
          }
        }
        const std::size_t ldo = n + 5;
        std::vector<float> out(nq * ldo, -7.0f);
        std::vector<float> qpacked(packed_query_floats(*k, nq, d), -5.0f);
        k->pack_queries(q.data(), nq, d, qpacked.data());
        for (std::size_t a = 0; a < qpacked.size() / d; ++a)  // group layout, zero-padded
          for (std::size_t i = 0; i < d; ++i) {
            const std::size_t G = k->query_group, g = a / G;
            CHECK(qpacked[g * G * d + i * G + a % G] == (a < nq ? q[a * d + i] : 0.0f));
          }
        k->dot_packed(qpacked.data(), nq, packed.data(), n, d, out.data(), ldo);
        std::vector<float> row(d);
        for (std::size_t r = 0; r < n; ++r) {
          codec.decode(&rows[r * codec.row_bytes()], row.data());
          for (std::size_t a = 0; a < nq; ++a) {
            double dot = 0;
            for (std::size_t i = 0; i < d; ++i) dot += double(q[a * d + i]) * row[i];
            CHECK_NEAR(out[a * ldo + r], dot, 1e-4);
          }
        }
        for (std::size_t a = 0; a < nq; ++a)
          for (std::size_t j = n; j < ldo; ++j) CHECK(out[a * ldo + j] == -7.0f);  // nothing written past n
      }
    }
  }
}

TEST(encodings_are_close_to_input) {
  const std::size_t d = 300, n = 20;
  auto x = random_vec(n * d, 42);
  // Worst relative element error each type allows (int8: half a step of max|x| / 127).
  for (Storage s : kStorages) {
    Codec codec(s, d);
    std::vector<std::uint8_t> rows(n * codec.row_bytes());
    CHECK(codec.encode(x.data(), n, rows.data()).ok());
    std::vector<float> back(d);
    for (std::size_t r = 0; r < n; ++r) {
      codec.decode(&rows[r * codec.row_bytes()], back.data());
      float amax = 0;
      for (std::size_t i = 0; i < d; ++i) amax = std::max(amax, std::fabs(x[r * d + i]));
      for (std::size_t i = 0; i < d; ++i) {
        float v = x[r * d + i], err = std::fabs(back[i] - v);
        if (s == Storage::f32) CHECK(err == 0);
        if (s == Storage::f16) CHECK(err <= std::fabs(v) * 0x1p-11f + 0x1p-25f);
        if (s == Storage::bf16) CHECK(err <= std::fabs(v) * 0x1p-8f);
        if (s == Storage::int8) CHECK(err <= amax / 127.0f * 0.5f + 1e-6f);
      }
    }
  }
}

TEST(half_and_bf16_conversions_round_to_nearest_even) {
  CHECK(float_to_half(1.0f) == 0x3C00);
  CHECK(float_to_half(-2.0f) == 0xC000);
  CHECK(float_to_half(65504.0f) == 0x7BFF);
  CHECK(float_to_half(65520.0f) == 0x7C00);             // rounds up to infinity
  CHECK(float_to_half(1.0f + 0x1p-11f) == 0x3C00);      // exact tie: to even (down)
  CHECK(float_to_half(1.0f + 3 * 0x1p-11f) == 0x3C02);  // exact tie: to even (up)
  CHECK(float_to_half(0x1p-24f) == 0x0001);             // smallest subnormal
  CHECK(float_to_half(0x1p-26f) == 0x0000);             // below half of it: zero
  CHECK(half_to_float(0x0001) == 0x1p-24f);
  CHECK(half_to_float(0x3555) == 0.333251953125f);
  for (std::uint32_t h = 0; h < 0x7C00; ++h) CHECK(float_to_half(half_to_float(std::uint16_t(h))) == h);
  CHECK(float_to_bf16(1.0f) == 0x3F80);
  CHECK(float_to_bf16(1.0f + 0x1p-8f) == 0x3F80);  // tie to even
  CHECK(float_to_bf16(1.0f + 0x1p-7f + 0x1p-8f) == 0x3F82);
  CHECK(bf16_to_float(0x3F80) == 1.0f);
}

TEST(encode_rejects_values_outside_the_type) {
  Codec f16(Storage::f16, 2);
  float big[2] = {1.0f, 70000.0f};
  std::vector<std::uint8_t> out(f16.row_bytes());
  auto st = f16.encode(big, 1, out.data());
  CHECK(!st.ok() && st.error().message.find("float16") != std::string::npos);
  Codec bf(Storage::bf16, 2);
  float huge[2] = {3.4e38f, 0.0f};
  CHECK(!bf.encode(huge, 1, out.data()).ok());
  Codec i8(Storage::int8, 2);
  float zero[2] = {0, 0};
  std::vector<std::uint8_t> zrow(i8.row_bytes());
  CHECK(i8.encode(zero, 1, zrow.data()).ok());
  float q[2] = {1, 1};
  CHECK(i8.dot(q, zrow.data()) == 0.0f);
}

TEST(best_isa_is_available) {
  CHECK(isa_available(best_isa()));
  CHECK(&default_kernels() == kernels_for(best_isa()));
  for (Isa isa : kAllIsas) CHECK(isa_from_name(isa_name(isa)) == isa);
  // The dot-product kernel sets are picked whenever the CPU has the instructions.
  if (isa_available(Isa::avx512bf16)) CHECK(best_isa() == Isa::avx512bf16);
  CHECK(!isa_available(Isa::avx512bf16) || isa_available(Isa::avx512vnni));
  CHECK(isa_available(Isa::avx512vnni) == (isa_compiled(Isa::avx512vnni) && isa_available(Isa::avx512) &&
                                           cpu_features().avx512vnni));
  CHECK(!isa_from_name("sse9").has_value());
  CHECK(storage_from_name("bf16") == Storage::bf16);
  CHECK(!storage_from_name("int4").has_value());
  CHECK(row_bytes(Storage::int8, 5) == 12);
}

VSR_TEST_MAIN

#include "vsr/codec.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "vsr/kernels.hpp"

namespace vsr {

std::string_view storage_name(Storage s) noexcept {
  switch (s) {
    case Storage::f32: return "f32";
    case Storage::f16: return "f16";
    case Storage::bf16: return "bf16";
    case Storage::int8: return "int8";
  }
  return "unknown";
}

std::optional<Storage> storage_from_name(std::string_view name) noexcept {
  if (name == "f32" || name == "float32") return Storage::f32;
  if (name == "f16" || name == "float16") return Storage::f16;
  if (name == "bf16" || name == "bfloat16") return Storage::bf16;
  if (name == "int8" || name == "i8") return Storage::int8;
  return std::nullopt;
}

namespace {

std::uint32_t bits_of(float x) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

float float_of(std::uint32_t u) noexcept {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

std::uint16_t float_to_half(float x) noexcept {
  const std::uint32_t u = bits_of(x);
  const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
  const std::uint32_t abs = u & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return std::uint16_t(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u));  // inf/NaN
  if (abs >= 0x477FF000u) return std::uint16_t(sign | 0x7C00u);  // rounds to >= 65520: overflow to inf
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero) in half precision: scale into the subnormal grid, which
    // rounds to nearest even in float arithmetic (2^-24 is the half subnormal step).
    const float scaled = float_of(abs) * 16777216.0f;  // * 2^24
    return std::uint16_t(sign | std::uint16_t(std::nearbyint(scaled)));
  }
  // Normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even.
  std::uint32_t h = ((abs >> 13) - ((127u - 15u) << 10));
  const std::uint32_t rest = abs & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carry may move into the exponent: correct
  return std::uint16_t(sign | h);
}

float half_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  const std::uint32_t man = h & 0x3FFu;
  if (exp == 0) {
    const float v = float(man) * (1.0f / 16777216.0f);  // man * 2^-24, exact
    return sign ? -v : v;
  }
  if (exp == 31) return float_of(sign | 0x7F800000u | (man << 13));
  return float_of(sign | ((exp + 112u) << 23) | (man << 13));
}

std::uint16_t float_to_bf16(float x) noexcept {
  std::uint32_t u = bits_of(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return std::uint16_t((u >> 16) | 0x40u);  // keep NaN a NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  return std::uint16_t(u >> 16);
}

Codec::Codec(Storage storage, std::size_t dim, Isa isa)
    : storage_(storage), dim_(dim), isa_(isa), k_(nullptr) {
  const Kernels* table = isa_available(isa) ? kernels_for(isa) : nullptr;
  if (table == nullptr) {
    table = kernels_for(Isa::scalar);
    isa_ = Isa::scalar;
  }
  k_ = &table->storage[std::size_t(storage)];
}

Status Codec::encode(const float* x, std::size_t n, std::uint8_t* out) const {
  const std::size_t d = dim_, rb = row_bytes();
  for (std::size_t r = 0; r < n; ++r) {
    const float* v = x + r * d;
    std::uint8_t* row = out + r * rb;
    switch (storage_) {
      case Storage::f32: std::memcpy(row, v, d * sizeof(float)); break;
      case Storage::f16:
        for (std::size_t i = 0; i < d; ++i) {
          if (std::fabs(v[i]) > 65504.0f)
            return make_error(ErrorCode::invalid_argument,
                              "value " + std::to_string(v[i]) + " in row " + std::to_string(r) +
                                  " does not fit float16 storage (|x| <= 65504)");
          const std::uint16_t h = float_to_half(v[i]);
          std::memcpy(row + 2 * i, &h, 2);
        }
        break;
      case Storage::bf16:
        for (std::size_t i = 0; i < d; ++i) {
          const std::uint16_t b = float_to_bf16(v[i]);
          if ((b & 0x7F80u) == 0x7F80u)
            return make_error(ErrorCode::invalid_argument,
                              "value in row " + std::to_string(r) + " overflows bfloat16 storage");
          std::memcpy(row + 2 * i, &b, 2);
        }
        break;
      case Storage::int8: {
        float amax = 0.0f;
        for (std::size_t i = 0; i < d; ++i) amax = std::max(amax, std::fabs(v[i]));
        const float scale = amax / 127.0f;
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (std::size_t i = 0; i < d; ++i) {
          const float c = std::clamp(std::nearbyint(v[i] * inv), -127.0f, 127.0f);
          row[i] = std::uint8_t(std::int8_t(c));
        }
        for (std::size_t i = d; i < (d + 3) / 4 * 4; ++i) row[i] = 0;
        std::memcpy(row + (d + 3) / 4 * 4, &scale, sizeof scale);
        break;
      }
    }
  }
  return {};
}

float Codec::element(const std::uint8_t* row, std::size_t i) const noexcept {
  switch (storage_) {
    case Storage::f32: {
      float f;
      std::memcpy(&f, row + 4 * i, 4);
      return f;
    }
    case Storage::f16: {
      std::uint16_t h;
      std::memcpy(&h, row + 2 * i, 2);
      return half_to_float(h);
    }
    case Storage::bf16: {
      std::uint16_t b;
      std::memcpy(&b, row + 2 * i, 2);
      return bf16_to_float(b);
    }
    case Storage::int8: {
      float scale;
      std::memcpy(&scale, row + (dim_ + 3) / 4 * 4, sizeof scale);
      return scale * float(std::int8_t(row[i]));
    }
  }
  return 0.0f;
}

void Codec::decode(const std::uint8_t* row, float* out) const noexcept {
  if (storage_ == Storage::f32) {
    std::memcpy(out, row, dim_ * sizeof(float));
    return;
  }
  for (std::size_t i = 0; i < dim_; ++i) out[i] = element(row, i);
}

float Codec::dot(const float* q, const std::uint8_t* row) const noexcept { return k_->dot(q, row, dim_); }

float Codec::l2sq(const float* q, const std::uint8_t* row) const noexcept { return k_->l2sq(q, row, dim_); }

float Codec::sqnorm(const std::uint8_t* row) const noexcept {
  // Decoded in small chunks on the stack: no allocation, and double accumulation since the
  // norm feeds the l2 expansion where cancellation would amplify its error.
  constexpr std::size_t kChunk = 64;
  float buf[kChunk];
  double s = 0.0;
  const std::size_t d = dim_;
  for (std::size_t b = 0; b < d; b += kChunk) {
    const std::size_t e = std::min(d, b + kChunk);
    for (std::size_t i = b; i < e; ++i) buf[i - b] = element(row, i);
    for (std::size_t i = b; i < e; ++i) s += double(buf[i - b]) * buf[i - b];
  }
  return float(s);
}

void Codec::dot_block(const float* queries, std::size_t nq, const std::uint8_t* rows, std::size_t n, float* out,
                      std::size_t ldo) const noexcept {
  k_->dot_block(queries, nq, rows, n, dim_, out, ldo);
}

}  // namespace vsr

// Shared vocabulary of the index engine: typed kinds, errors as values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace vsr {

using idx_t = std::int64_t;  // external vector id; -1 marks "no result" (faiss convention)
inline constexpr idx_t kNoId = -1;

enum class Metric : std::uint8_t { inner_product = 0, cosine = 1, l2 = 2 };

std::string_view metric_name(Metric m) noexcept;
std::optional<Metric> metric_from_name(std::string_view name) noexcept;

// Larger score is better for every metric: l2 results are reported as squared distances but
// ranked ascending; higher_is_better() tells callers which direction a metric's scores go.
constexpr bool higher_is_better(Metric m) noexcept { return m != Metric::l2; }

enum class ErrorCode : std::uint8_t {
  invalid_argument,
  out_of_range,
  not_found,
  io_error,
  corrupt_file,
  unsupported,
  out_of_memory,
};

struct Error {
  ErrorCode code;
  std::string message;
};

// Result-or-error: core functions return this; bindings turn an Error into an exception.
template <typename T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}             // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::move(error)) {}         // NOLINT(google-explicit-constructor)
  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

// Result<void> equivalent.
class Status {
 public:
  Status() = default;
  Status(Error error) : err_(std::move(error)) {}  // NOLINT(google-explicit-constructor)
  static Status ok_status() { return Status(); }
  bool ok() const noexcept { return !err_.has_value(); }
  explicit operator bool() const noexcept { return ok(); }
  const Error& error() const { return *err_; }

 private:
  std::optional<Error> err_;
};

inline Error make_error(ErrorCode code, std::string message) { return Error{code, std::move(message)}; }

}  // namespace vsr

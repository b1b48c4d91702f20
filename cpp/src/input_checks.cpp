#include "vsr/input_checks.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace vsr {

bool all_finite(const float* x, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

double sqnorm(const float* x, std::size_t d) noexcept {
  double s = 0;
  for (std::size_t i = 0; i < d; ++i) s += double(x[i]) * x[i];
  return s;
}

bool normalize_rows(float* x, std::size_t n, std::size_t d, std::size_t* bad_row) noexcept {
  for (std::size_t r = 0; r < n; ++r) {
    float* v = x + r * d;
    const double s = sqnorm(v, d);
    if (!(s > 0)) {
      *bad_row = r;
      return false;
    }
    const float inv = float(1.0 / std::sqrt(s));
    for (std::size_t i = 0; i < d; ++i) v[i] *= inv;
  }
  return true;
}

namespace {
std::string metric_name_for(Metric m) { return std::string(metric_name(m)); }
}  // namespace

Result<idx_t> next_id_after(idx_t next_id, const idx_t* ids, std::size_t n) {
  if (n == 0) return next_id;
  if (ids == nullptr) {
    // Automatic ids next_id .. next_id + n - 1 must all be at most kMaxId.
    if (next_id > kMaxId || std::uint64_t(kMaxId - next_id) < std::uint64_t(n) - 1)
      return make_error(ErrorCode::out_of_range, "no room for " + std::to_string(n) +
                                                     " automatic ids after id " + std::to_string(next_id - 1) +
                                                     " (ids stop at 2^63 - 2); pass ids explicitly");
    return next_id + idx_t(n);
  }
  for (std::size_t i = 0; i < n; ++i) next_id = std::max(next_id, ids[i] + 1);
  return next_id;
}

Result<const float*> prepare_rows(const float* rows, std::size_t n, std::size_t dim, Metric metric,
                                  const char* noun, std::vector<float>& storage) {
  if (rows == nullptr && n > 0) return make_error(ErrorCode::invalid_argument, std::string(noun) + " array is null");
  const bool bounded = metric != Metric::cosine;
  for (std::size_t r = 0; r < n; ++r) {
    // The squared norm in double is finite exactly when every component is (a float's square
    // cannot overflow a double), so one pass checks both.
    const double s = sqnorm(rows + r * dim, dim);
    if (!std::isfinite(s))
      return make_error(ErrorCode::invalid_argument,
                        std::string(noun) + " " + std::to_string(r) + " contains NaN or infinity");
    if (bounded && s > kMaxNorm * kMaxNorm) {
      char norm[32];
      std::snprintf(norm, sizeof norm, "%.3g", std::sqrt(s));
      return make_error(ErrorCode::invalid_argument,
                        std::string(noun) + " " + std::to_string(r) + " has norm " + norm +
                            ", above 1e18, the largest whose scores float32 can hold (" + metric_name_for(metric) +
                            " metric)");
    }
  }
  if (metric != Metric::cosine) return rows;
  storage.assign(rows, rows + n * dim);
  std::size_t bad = 0;
  if (!normalize_rows(storage.data(), n, dim, &bad))
    return make_error(ErrorCode::invalid_argument,
                      std::string(noun) + " " + std::to_string(bad) + " is all zeros and has no cosine direction");
  return static_cast<const float*>(storage.data());
}

Status check_search_args(std::size_t k, const float* scores, const idx_t* ids) {
  if (k == 0) return make_error(ErrorCode::invalid_argument, "k must be positive");
  if (scores == nullptr || ids == nullptr) return make_error(ErrorCode::invalid_argument, "output buffers are null");
  return {};
}

Status check_k_fits(std::size_t k, std::size_t size) {
  if (k > size)
    return make_error(ErrorCode::invalid_argument,
                      "k = " + std::to_string(k) + " exceeds the " + std::to_string(size) + " vectors in the index");
  return {};
}

std::string missing_ids_message(const std::vector<idx_t>& missing) {
  if (missing.size() == 1) return "id " + std::to_string(missing[0]) + " is not in the index";
  constexpr std::size_t kListed = 10;
  std::string msg = std::to_string(missing.size()) + " ids are not in the index: ";
  for (std::size_t i = 0; i < std::min(missing.size(), kListed); ++i)
    msg += (i > 0 ? ", " : "") + std::to_string(missing[i]);
  if (missing.size() > kListed) msg += ", ...";
  return msg;
}

Status check_range_args(float radius, const RangeResult* out) {
  if (out == nullptr) return make_error(ErrorCode::invalid_argument, "output is null");
  if (!std::isfinite(radius)) return make_error(ErrorCode::invalid_argument, "radius must be finite");
  return {};
}

void write_range_result(Metric metric, const std::vector<std::vector<std::pair<float, idx_t>>>& hits,
                        RangeResult* out) {
  const std::size_t nq = hits.size();
  const float sign = metric == Metric::l2 ? -1.0f : 1.0f;
  out->lims.assign(nq + 1, 0);
  for (std::size_t i = 0; i < nq; ++i) out->lims[i + 1] = out->lims[i] + hits[i].size();
  out->scores.resize(out->lims[nq]);
  out->ids.resize(out->lims[nq]);
  for (std::size_t i = 0; i < nq; ++i)
    for (std::size_t j = 0; j < hits[i].size(); ++j) {
      out->scores[out->lims[i] + j] = sign * hits[i][j].first;
      out->ids[out->lims[i] + j] = hits[i][j].second;
    }
}

}  // namespace vsr

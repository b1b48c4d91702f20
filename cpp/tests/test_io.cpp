// The section file container: round trip, and every kind of damage is reported, never read.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "test_harness.hpp"
#include "vsr/io.hpp"

using namespace vsr;
using namespace vsr::io;

static std::string temp_path(const char* tag) {
  return "/tmp/vsr_test_io_" + std::to_string(::getpid()) + "_" + tag + ".vsr";
}

static std::vector<char> read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

static void write_bytes(const std::string& p, const std::vector<char>& b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(b.data(), std::streamsize(b.size()));
}

static Status write_sample(const std::string& path) {
  FileWriter w(IndexKind::flat, 3);
  static const float floats[5] = {1, 2, 3, 4, 5};
  static const char text[] = "hello";
  Status st = w.add("floats", floats, sizeof floats);
  if (!st.ok()) return st;
  st = w.add_owned("text", std::vector<std::uint8_t>(text, text + 5));
  if (!st.ok()) return st;
  st = w.add("empty", nullptr, 0);
  if (!st.ok()) return st;
  return w.write(path);
}

TEST(crc32c_known_value_and_paths_agree) {
  const char* s = "123456789";
  CHECK(crc32c(s, 9) == 0xE3069283u);
  CHECK(crc32c_portable(s, 9) == 0xE3069283u);
  std::vector<std::uint8_t> big(1000);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = std::uint8_t(i * 7 + 3);
  for (std::size_t n : {0u, 1u, 7u, 8u, 9u, 63u, 1000u}) CHECK(crc32c(big.data(), n) == crc32c_portable(big.data(), n));
  // Chaining equals one pass.
  CHECK(crc32c(big.data() + 100, 900, crc32c(big.data(), 100)) == crc32c(big.data(), 1000));
}

TEST(round_trip_mapped_and_read) {
  const std::string path = temp_path("rt");
  CHECK(write_sample(path).ok());
  for (bool use_mmap : {true, false}) {
    auto r = FileReader::open(path, use_mmap, true);
    CHECK(r.ok());
    if (!r.ok()) continue;
    auto& f = *r.value();
    CHECK(f.kind() == IndexKind::flat && f.kind_version() == 3 && f.mapped() == use_mmap);
    auto fl = f.section("floats", 5 * sizeof(float));
    CHECK(fl.ok() && reinterpret_cast<std::uintptr_t>(fl.value().data) % 4 == 0);
    CHECK(fl.ok() && reinterpret_cast<const float*>(fl.value().data)[4] == 5.0f);
    auto tx = f.section("text");
    CHECK(tx.ok() && tx.value().size == 5 && std::memcmp(tx.value().data, "hello", 5) == 0);
    CHECK(f.section("empty").ok() && f.section("empty").value().size == 0);
    CHECK(!f.section("missing").ok());
    CHECK(!f.section("floats", 4).ok());  // wrong expected size is an error
  }
  CHECK(peek_kind(path).ok() && peek_kind(path).value() == IndexKind::flat);
  std::remove(path.c_str());
}

TEST(every_single_byte_flip_is_detected) {
  const std::string path = temp_path("flip"), bad = temp_path("flipbad");
  CHECK(write_sample(path).ok());
  const auto good = read_bytes(path);
  std::size_t detected = 0, harmless = 0;
  for (std::size_t i = 0; i < good.size(); ++i) {
    auto b = good;
    b[i] = char(b[i] ^ 0x5A);
    write_bytes(bad, b);
    auto r = FileReader::open(bad, true, true);
    if (!r.ok()) {
      ++detected;
      CHECK(r.error().code == ErrorCode::corrupt_file || r.error().code == ErrorCode::unsupported);
      continue;
    }
    // Only alignment padding between sections may change without notice; contents never do.
    auto& f = *r.value();
    CHECK(std::memcmp(f.section("text").value().data, "hello", 5) == 0);
    CHECK(reinterpret_cast<const float*>(f.section("floats").value().data)[0] == 1.0f);
    ++harmless;
  }
  CHECK(detected > 0 && harmless < good.size() / 2);
  std::remove(path.c_str());
  std::remove(bad.c_str());
}

TEST(truncation_wrong_magic_newer_version_missing_file) {
  const std::string path = temp_path("trunc"), bad = temp_path("truncbad");
  CHECK(write_sample(path).ok());
  const auto good = read_bytes(path);
  for (std::size_t len : {std::size_t(0), std::size_t(10), std::size_t(64), good.size() - 1}) {
    write_bytes(bad, std::vector<char>(good.begin(), good.begin() + long(len)));
    auto r = FileReader::open(bad, true, false);
    CHECK(!r.ok() && r.error().code == ErrorCode::corrupt_file);
  }
  auto b = good;
  b[0] = 'X';
  write_bytes(bad, b);
  auto r = FileReader::open(bad, false, false);
  CHECK(!r.ok() && r.error().message.find("magic") != std::string::npos);
  // A newer format version with a valid header checksum: the message says to upgrade.
  b = good;
  std::uint32_t v = kFormatVersion + 1;
  std::memcpy(&b[8], &v, 4);
  std::uint32_t c = crc32c(b.data(), 60);
  std::memcpy(&b[60], &c, 4);
  write_bytes(bad, b);
  r = FileReader::open(bad, false, false);
  CHECK(!r.ok() && r.error().code == ErrorCode::unsupported && r.error().message.find("upgrade") != std::string::npos);
  r = FileReader::open("/nonexistent/dir/x.vsr", true, true);
  CHECK(!r.ok() && r.error().code == ErrorCode::io_error);
  std::remove(path.c_str());
  std::remove(bad.c_str());
}

TEST(writer_rejects_bad_sections_and_leaves_no_temp_file) {
  FileWriter w(IndexKind::graph, 1);
  CHECK(!w.add("", nullptr, 0).ok());
  CHECK(!w.add(std::string(32, 'x'), nullptr, 0).ok());
  CHECK(w.add("a", nullptr, 0).ok());
  CHECK(!w.add("a", nullptr, 0).ok());
  CHECK(!w.add("b", nullptr, 4).ok());
  auto st = w.write("/nonexistent/dir/x.vsr");
  CHECK(!st.ok() && st.error().code == ErrorCode::io_error);
}

VSR_TEST_MAIN

// The section file container: round trip, and every kind of damage is reported, never read.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <dirent.h>
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

namespace {

mode_t mode_of(const std::string& path) {
  struct stat st {};
  CHECK(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

// Files in `dir` whose names start with `prefix`.
std::vector<std::string> files_starting(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d))
    if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) out.emplace_back(e->d_name);
  ::closedir(d);
  return out;
}

std::string fresh_dir() {
  char tmpl[] = "/tmp/vsr_test_io_XXXXXX";
  return ::mkdtemp(tmpl);
}

}  // namespace

TEST(saved_files_follow_the_umask_and_keep_an_existing_files_mode) {
  const std::string dir = fresh_dir(), path = dir + "/index.vsr";
  const mode_t old_mask = ::umask(027);
  CHECK(write_sample(path).ok());
  CHECK(mode_of(path) == 0640);
  ::umask(077);
  std::remove(path.c_str());
  CHECK(write_sample(path).ok());
  CHECK(mode_of(path) == 0600);
  ::umask(022);
  // Saving over an existing file keeps that file's permissions, whatever the umask.
  CHECK(::chmod(path.c_str(), 0604) == 0);
  CHECK(write_sample(path).ok());
  CHECK(mode_of(path) == 0604);
  ::umask(old_mask);
}

TEST(a_save_removes_temporary_files_that_killed_saves_left_behind) {
  const std::string dir = fresh_dir(), path = dir + "/index.vsr";
  // What a save killed half-way leaves: its temporary file, with nobody writing it any more.
  write_bytes(path + ".tmp-a1B2c3", std::vector<char>(4096, 'x'));
  write_bytes(path + ".tmp-zzzzzz", std::vector<char>(10, 'y'));
  // A save in progress in another process holds a lock on its temporary file: left alone.
  const std::string busy = path + ".tmp-busy01";
  write_bytes(busy, std::vector<char>(10, 'z'));
  const int fd = ::open(busy.c_str(), O_RDONLY);
  CHECK(fd >= 0 && ::flock(fd, LOCK_EX) == 0);
  // Other files sharing the prefix are not temporary files of this path.
  write_bytes(dir + "/index.vsr.bak", std::vector<char>(3, 'b'));
  write_bytes(dir + "/other.vsr.tmp-abcdef", std::vector<char>(3, 'o'));
  CHECK(write_sample(path).ok());
  const auto left = files_starting(dir, "index.vsr.tmp-");
  CHECK(left.size() == 1 && left[0] == "index.vsr.tmp-busy01");
  CHECK(files_starting(dir, "index.vsr.bak").size() == 1);
  CHECK(files_starting(dir, "other.vsr.tmp-").size() == 1);
  ::close(fd);
  // Once its writer is gone, the next save removes it too.
  CHECK(write_sample(path).ok());
  CHECK(files_starting(dir, "index.vsr.tmp-").empty());
  CHECK(FileReader::open(path, false, true).ok());
}

TEST(a_mapped_file_changed_on_disk_is_reported_not_read) {
  const std::string dir = fresh_dir(), path = dir + "/index.vsr";
  CHECK(write_sample(path).ok());
  auto reader = FileReader::open(path, true, true).value();
  CHECK(reader->check_unchanged().ok());
  // Replaced by a save (rename): the mapping still holds the old file, which is safe to read.
  CHECK(write_sample(path).ok());
  CHECK(reader->check_unchanged().ok());
  reader = FileReader::open(path, true, true).value();
  // Overwritten in place, same size, a moment later: an error naming the file.
  auto bytes = read_bytes(path);
  bytes[70] ^= 1;
  {
    const int fd = ::open(path.c_str(), O_WRONLY);
    CHECK(fd >= 0);
    CHECK(::pwrite(fd, bytes.data(), bytes.size(), 0) == ssize_t(bytes.size()));
    struct stat st {};
    CHECK(::fstat(fd, &st) == 0);
    const timespec later[2] = {st.st_atim, {st.st_mtim.tv_sec + 1, st.st_mtim.tv_nsec}};
    CHECK(::futimens(fd, later) == 0);
    ::close(fd);
  }
  Status st = reader->check_unchanged();
  CHECK(!st.ok() && st.error().message.find(path) != std::string::npos &&
        st.error().message.find("changed") != std::string::npos);
  // Truncated in place.
  reader = FileReader::open(path, true, false).value();
  CHECK(::truncate(path.c_str(), 100) == 0);
  st = reader->check_unchanged();
  CHECK(!st.ok() && st.error().message.find("changed") != std::string::npos);
  // A file read into memory does not depend on the file any more.
  CHECK(write_sample(path).ok());
  reader = FileReader::open(path, false, true).value();
  CHECK(::truncate(path.c_str(), 100) == 0);
  CHECK(reader->check_unchanged().ok());
}

VSR_TEST_MAIN

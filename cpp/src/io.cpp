#include "vsr/io.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <unordered_set>

#include "vsr/storage_alloc.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define VSR_CRC_X86 1
#endif

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "index files are little-endian");

namespace vsr::io {

std::string_view index_kind_name(IndexKind kind) noexcept {
  switch (kind) {
    case IndexKind::flat: return "flat";
    case IndexKind::graph: return "graph";
  }
  return "unknown";
}

namespace {

constexpr std::uint32_t kCrcPoly = 0x82F63B78u;  // reflected Castagnoli polynomial

std::array<std::uint32_t, 256> make_crc_table() noexcept {
  std::array<std::uint32_t, 256> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int b = 0; b < 8; ++b) c = (c >> 1) ^ (kCrcPoly & (0u - (c & 1u)));
    t[i] = c;
  }
  return t;
}

#ifdef VSR_CRC_X86
__attribute__((target("sse4.2"))) std::uint32_t crc32c_sse42(const void* data, std::size_t n,
                                                               std::uint32_t crc) noexcept {
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::uint64_t c = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
  }
  std::uint32_t c32 = std::uint32_t(c);
  for (; n > 0; --n, ++p) c32 = _mm_crc32_u8(c32, *p);
  return ~c32;
}
#endif

// Little-endian field access into byte buffers.
template <typename T>
T get(const std::uint8_t* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
void put(std::uint8_t* p, T v) noexcept {
  std::memcpy(p, &v, sizeof v);
}

std::size_t align_up(std::size_t x) noexcept { return (x + kAlign - 1) / kAlign * kAlign; }

std::string errno_text() { return std::strerror(errno); }

Error io_error(const std::string& what, const std::string& path) {
  return make_error(ErrorCode::io_error, what + " '" + path + "': " + errno_text());
}

Error corrupt(const std::string& path, const std::string& what) {
  return make_error(ErrorCode::corrupt_file, "'" + path + "': " + what);
}

// Writes all bytes, retrying short writes and EINTR.
bool write_all(int fd, const void* data, std::size_t n) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= std::size_t(w);
  }
  return true;
}

std::string parent_dir(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_name(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Temp files of a write to `path` are "<path>.tmp-" + kTempSuffix characters [A-Za-z0-9].
constexpr char kTempMark[] = ".tmp-";
constexpr std::size_t kTempSuffix = 6;

bool is_temp_name(const char* name, const std::string& base) {
  const std::size_t b = base.size(), m = sizeof kTempMark - 1;
  if (std::strncmp(name, base.c_str(), b) != 0 || std::strncmp(name + b, kTempMark, m) != 0) return false;
  const char* suffix = name + b + m;
  if (std::strlen(suffix) != kTempSuffix) return false;
  for (const char* c = suffix; *c != 0; ++c)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9'))) return false;
  return true;
}

// Six random characters for a temp name: unique enough with O_EXCL retries, no allocation.
void random_suffix(char* out) {
  static std::atomic<std::uint64_t> counter{0};
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  std::uint64_t x = std::uint64_t(ts.tv_nsec) ^ (std::uint64_t(ts.tv_sec) << 30) ^
                    (std::uint64_t(::getpid()) << 16) ^ (counter.fetch_add(1) * 0x9E3779B97F4A7C15ull);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  for (std::size_t i = 0; i < kTempSuffix; ++i, x /= 62) out[i] = alphabet[x % 62];
}

// Removes the temp files of earlier writes to `path` that no process is writing any more (a
// writer holds an exclusive lock on its temp file until it has renamed it), i.e. those left by
// writes that were killed. Best effort: anything unexpected is left alone.
void remove_stale_temps(const std::string& path) {
  const std::string dir = parent_dir(path), base = base_name(path);
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  const int dfd = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    if (!is_temp_name(e->d_name, base)) continue;
    const int fd = ::openat(dfd, e->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) continue;
    struct stat held {}, named {};
    // Unlocked: its writer is gone. The name must still be this file (not renamed and reused).
    if (::fstat(fd, &held) == 0 && S_ISREG(held.st_mode) && ::flock(fd, LOCK_EX | LOCK_NB) == 0 &&
        ::fstatat(dfd, e->d_name, &named, AT_SYMLINK_NOFOLLOW) == 0 && named.st_ino == held.st_ino &&
        named.st_dev == held.st_dev)
      ::unlinkat(dfd, e->d_name, 0);
    ::close(fd);
  }
  ::closedir(d);
}

// The temp file of one write: created next to the target, locked while written, removed by the
// destructor unless it was renamed onto the target.
class TempFile {
 public:
  ~TempFile() {
    if (fd_ >= 0) {
      if (!committed_) ::unlink(name_);
      ::close(fd_);
    }
  }
  // Creates "<path>.tmp-XXXXXX" with mode 0666 less the umask; false (errno set) on failure.
  bool create(const std::string& path) {
    if (path.size() + sizeof kTempMark + kTempSuffix >= sizeof name_) {
      errno = ENAMETOOLONG;
      return false;
    }
    std::memcpy(name_, path.data(), path.size());
    std::memcpy(name_ + path.size(), kTempMark, sizeof kTempMark - 1);
    char* suffix = name_ + path.size() + sizeof kTempMark - 1;
    suffix[kTempSuffix] = '\0';
    for (int attempt = 0; attempt < 100; ++attempt) {
      random_suffix(suffix);
      const int fd = ::open(name_, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd < 0) {
        if (errno == EEXIST) continue;
        return false;
      }
      // The lock tells other writers' clean-up that this file is in use. Between open and flock
      // a clean-up may have taken it for a stale one and removed it: then start again.
      struct stat st {};
      if (::flock(fd, LOCK_EX) != 0 || ::fstat(fd, &st) != 0 || st.st_nlink == 0) {
        ::close(fd);
        continue;
      }
      fd_ = fd;
      return true;
    }
    errno = EEXIST;
    return false;
  }
  int fd() const noexcept { return fd_; }
  const char* name() const noexcept { return name_; }
  void committed() noexcept { committed_ = true; }

 private:
  char name_[4096] = {};
  int fd_ = -1;
  bool committed_ = false;
};

// Header fields (byte offsets).
constexpr std::size_t kOffVersion = 8, kOffKind = 12, kOffKindVersion = 16, kOffCount = 20, kOffTable = 24,
                      kOffFileSize = 32, kOffTableCrc = 40, kOffHeaderCrc = 60;
// Table entry fields.
constexpr std::size_t kOffEntryOffset = 32, kOffEntrySize = 40, kOffEntryCrc = 48;

}  // namespace

std::uint32_t crc32c_portable(const void* data, std::size_t n, std::uint32_t crc) noexcept {
  static const std::array<std::uint32_t, 256> table = make_crc_table();
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::uint32_t c = ~crc;
  for (std::size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
  return ~c;
}

std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc) noexcept {
#ifdef VSR_CRC_X86
  static const bool hw = __builtin_cpu_supports("sse4.2");
  if (hw) return crc32c_sse42(data, n, crc);
#endif
  return crc32c_portable(data, n, crc);
}

Status FileWriter::add(std::string name, const void* data, std::size_t bytes) {
  if (name.empty() || name.size() > kMaxSectionName)
    return make_error(ErrorCode::invalid_argument, "section name '" + name + "' must be 1 to 31 bytes");
  for (const Pending& s : sections_)
    if (s.name == name) return make_error(ErrorCode::invalid_argument, "duplicate section '" + name + "'");
  if (bytes > 0 && data == nullptr) return make_error(ErrorCode::invalid_argument, "section '" + name + "' has no data");
  sections_.push_back({std::move(name), data, bytes});
  return {};
}

Status FileWriter::add_owned(std::string name, std::vector<std::uint8_t> bytes) {
  auto holder = std::make_shared<std::vector<std::uint8_t>>(std::move(bytes));
  Status st = add(std::move(name), holder->data(), holder->size());
  if (st.ok()) owned_.push_back(std::move(holder));
  return st;
}

Status FileWriter::write(const std::string& path) const {
  // Lay out the file: header, 64-byte aligned sections, then the table.
  std::vector<std::uint8_t> table(sections_.size() * kEntryBytes, 0);
  std::size_t offset = kHeaderBytes;
  for (std::size_t i = 0; i < sections_.size(); ++i) {
    const Pending& s = sections_[i];
    std::uint8_t* e = &table[i * kEntryBytes];
    std::memcpy(e, s.name.data(), s.name.size());
    put<std::uint64_t>(e + kOffEntryOffset, offset);
    put<std::uint64_t>(e + kOffEntrySize, s.bytes);
    put<std::uint32_t>(e + kOffEntryCrc, crc32c(s.data, s.bytes));
    offset = align_up(offset + s.bytes);
  }
  const std::size_t table_offset = offset, file_size = offset + table.size();
  std::uint8_t header[kHeaderBytes] = {};
  std::memcpy(header, kMagic, sizeof kMagic);
  put<std::uint32_t>(header + kOffVersion, kFormatVersion);
  put<std::uint32_t>(header + kOffKind, std::uint32_t(kind_));
  put<std::uint32_t>(header + kOffKindVersion, kind_version_);
  put<std::uint32_t>(header + kOffCount, std::uint32_t(sections_.size()));
  put<std::uint64_t>(header + kOffTable, table_offset);
  put<std::uint64_t>(header + kOffFileSize, file_size);
  put<std::uint32_t>(header + kOffTableCrc, crc32c(table.data(), table.size()));
  put<std::uint32_t>(header + kOffHeaderCrc, crc32c(header, kOffHeaderCrc));

  // Permissions: a replaced file keeps its own; a new one gets what the umask gives (the kernel
  // applies it to the 0666 the temp file is created with).
  struct stat existing {};
  const bool replacing = ::stat(path.c_str(), &existing) == 0 && S_ISREG(existing.st_mode);
  remove_stale_temps(path);
  TempFile tmp;
  if (!tmp.create(path)) return io_error("cannot create a temporary file next to", path);
  const int fd = tmp.fd();
  auto fail = [&](const char* what) { return io_error(what, tmp.name()); };
  static const std::uint8_t zeros[kAlign] = {};
  if (!write_all(fd, header, kHeaderBytes)) return fail("cannot write");
  std::size_t pos = kHeaderBytes;
  for (const Pending& s : sections_) {
    if (s.bytes > 0 && !write_all(fd, s.data, s.bytes)) return fail("cannot write");
    pos += s.bytes;
    const std::size_t pad = align_up(pos) - pos;
    if (pad > 0 && !write_all(fd, zeros, pad)) return fail("cannot write");
    pos += pad;
  }
  if (!write_all(fd, table.data(), table.size())) return fail("cannot write");
  if (replacing && ::fchmod(fd, existing.st_mode & 07777) != 0) return fail("cannot set permissions of");
  if (::fsync(fd) != 0) return fail("cannot flush");
  // Renamed while still open and locked, so no clean-up can take it for a stale temp file.
  if (::rename(tmp.name(), path.c_str()) != 0) return io_error("cannot rename the temporary file onto", path);
  tmp.committed();
  // The rename itself must reach the disk: flush the folder entry.
  int dfd = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return {};
}

FileReader::~FileReader() {
  if (map_ != nullptr) ::munmap(map_, map_bytes_);
  if (fd_ >= 0) ::close(fd_);
}

Status FileReader::check_unchanged() const {
  if (map_ == nullptr) return {};
  struct stat st {};
  if (::fstat(fd_, &st) != 0) return io_error("cannot stat", path_);
  if (std::size_t(st.st_size) == map_bytes_ && st.st_mtim.tv_sec == mtime_sec_ && st.st_mtim.tv_nsec == mtime_nsec_)
    return {};
  const std::string what = std::size_t(st.st_size) != map_bytes_
                               ? "its size went from " + std::to_string(map_bytes_) + " to " +
                                     std::to_string(st.st_size) + " bytes"
                               : "it was modified";
  return make_error(ErrorCode::io_error,
                    "index file '" + path_ + "' changed on disk while mapped (" + what +
                        "): the mapping no longer holds the index that was loaded; load it again. Replace "
                        "index files by saving (a rename), never by writing into them in place");
}

Result<std::shared_ptr<FileReader>> FileReader::open(const std::string& path, bool use_mmap, bool verify) {
  std::shared_ptr<FileReader> r(new FileReader());
  r->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return io_error("cannot open", path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    Error e = io_error("cannot stat", path);
    ::close(fd);
    return e;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(ErrorCode::io_error, "'" + path + "' is not a regular file");
  }
  const std::size_t size = std::size_t(st.st_size);
  if (size < kHeaderBytes) {
    ::close(fd);
    return corrupt(path, "file is " + std::to_string(size) + " bytes, shorter than the 64-byte header");
  }
  if (use_mmap) {
    void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
      Error e = io_error("cannot mmap", path);
      ::close(fd);
      return e;
    }
    advise_huge_pages(m, size);
    r->map_ = m;
    r->map_bytes_ = size;
    r->bytes_ = static_cast<const std::uint8_t*>(m);
    // Kept open: check_unchanged() compares the file's size and modification time with these.
    r->fd_ = fd;
    r->mtime_sec_ = st.st_mtim.tv_sec;
    r->mtime_nsec_ = st.st_mtim.tv_nsec;
  } else {
    r->buffer_.resize(size);
    std::size_t got = 0;
    while (got < size) {
      ssize_t n = ::read(fd, r->buffer_.data() + got, size - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        Error e = io_error("cannot read", path);
        ::close(fd);
        return e;
      }
      got += std::size_t(n);
    }
    r->bytes_ = r->buffer_.data();
  }
  if (r->fd_ != fd) ::close(fd);
  r->size_ = size;
  Status parsed = r->parse(verify);
  if (!parsed.ok()) return parsed.error();
  return r;
}

Status FileReader::parse(bool verify) {
  const std::uint8_t* h = bytes_;
  if (std::memcmp(h, kMagic, sizeof kMagic) != 0) return corrupt(path_, "not a vsr index file (wrong magic)");
  const std::uint32_t version = get<std::uint32_t>(h + kOffVersion);
  if (get<std::uint32_t>(h + kOffHeaderCrc) != crc32c(h, kOffHeaderCrc))
    return corrupt(path_, "header checksum mismatch");
  if (version > kFormatVersion)
    return make_error(ErrorCode::unsupported, "'" + path_ + "' has format version " + std::to_string(version) +
                                                  ", newer than this library's " + std::to_string(kFormatVersion) +
                                                  "; upgrade vsr-index to read it");
  if (version == 0) return corrupt(path_, "format version 0 is invalid");
  const std::uint32_t kind = get<std::uint32_t>(h + kOffKind);
  if (kind != std::uint32_t(IndexKind::flat) && kind != std::uint32_t(IndexKind::graph))
    return corrupt(path_, "unknown index kind " + std::to_string(kind));
  kind_ = IndexKind(kind);
  kind_version_ = get<std::uint32_t>(h + kOffKindVersion);
  const std::uint64_t file_size = get<std::uint64_t>(h + kOffFileSize);
  if (file_size != size_)
    return corrupt(path_, "file is " + std::to_string(size_) + " bytes but its header says " +
                              std::to_string(file_size) + " (truncated or extended)");
  const std::uint64_t count = get<std::uint32_t>(h + kOffCount);
  const std::uint64_t table = get<std::uint64_t>(h + kOffTable);
  if (table < kHeaderBytes || table > size_ || count > (size_ - table) / kEntryBytes ||
      table + count * kEntryBytes != size_)
    return corrupt(path_, "section table out of bounds");
  if (get<std::uint32_t>(h + kOffTableCrc) != crc32c(bytes_ + table, count * kEntryBytes))
    return corrupt(path_, "section table checksum mismatch");
  std::unordered_set<std::string> names;
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint8_t* e = bytes_ + table + i * kEntryBytes;
    Entry entry;
    entry.name.assign(reinterpret_cast<const char*>(e), strnlen(reinterpret_cast<const char*>(e), kMaxSectionName + 1));
    if (entry.name.empty() || entry.name.size() > kMaxSectionName) return corrupt(path_, "bad section name");
    entry.offset = get<std::uint64_t>(e + kOffEntryOffset);
    entry.size = get<std::uint64_t>(e + kOffEntrySize);
    entry.crc = get<std::uint32_t>(e + kOffEntryCrc);
    if (entry.offset < kHeaderBytes || entry.offset > table || entry.size > table - entry.offset ||
        entry.offset % kAlign != 0)
      return corrupt(path_, "section '" + entry.name + "' out of bounds");
    if (!names.insert(entry.name).second) return corrupt(path_, "section '" + entry.name + "' appears twice");
    if (verify && crc32c(bytes_ + entry.offset, entry.size) != entry.crc)
      return corrupt(path_, "section '" + entry.name + "' checksum mismatch");
    entries_.push_back(std::move(entry));
  }
  return {};
}

bool FileReader::has(std::string_view name) const noexcept {
  for (const Entry& e : entries_)
    if (e.name == name) return true;
  return false;
}

Result<Section> FileReader::section(std::string_view name, std::size_t expect_bytes) const {
  for (const Entry& e : entries_) {
    if (e.name != name) continue;
    if (expect_bytes != SIZE_MAX && e.size != expect_bytes)
      return corrupt(path_, "section '" + e.name + "' is " + std::to_string(e.size) + " bytes, expected " +
                                std::to_string(expect_bytes));
    return Section{bytes_ + e.offset, std::size_t(e.size)};
  }
  return corrupt(path_, "missing section '" + std::string(name) + "'");
}

Result<IndexKind> peek_kind(const std::string& path) {
  // Reading the header and table only is cheap with a mapping; payload CRCs are skipped.
  auto r = FileReader::open(path, /*use_mmap=*/true, /*verify=*/false);
  if (!r.ok()) return r.error();
  return r.value()->kind();
}

}  // namespace vsr::io

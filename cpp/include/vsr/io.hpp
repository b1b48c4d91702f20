// The index file container, shared by every index kind: one file of named, checksummed sections.
//
// Layout (little-endian; all offsets from the file start):
//   [0, 64)       header: magic "VSRINDEX", format version, index kind + kind version, section
//                 count, table offset, total file size, table CRC, header CRC (CRC-32C)
//   sections      payloads, each starting on a 64-byte boundary (so a mapped float array is aligned)
//   table         one 64-byte entry per section: name (<= 31 bytes), offset, size, CRC-32C
// The total size in the header detects truncation; the CRCs detect corruption; the format version
// rejects files from a newer release with a message saying so. Writes are atomic: a temp file in
// the same folder ("<name>.tmp-XXXXXX", locked while written), fsync, rename over the target,
// fsync of the folder. A new file gets the permissions the umask gives (0666 less the umask); a
// replaced file keeps its own. A failed write removes its temp file; a killed one cannot, so each
// write also removes the temp files of earlier writes to the same path that no process holds.
//
// Mapped files: the index reads the mapping, so the file must not be written in place while it is
// mapped (a save replaces it by rename, which leaves the mapping on the old contents).
// FileReader::check_unchanged() turns a file changed in place (another size or modification time)
// into an error; the indexes call it at the start of every call that reads the mapping. A change
// during a call cannot be caught that way: a file truncated under a running search still raises
// SIGBUS, as with any memory-mapped reader.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "vsr/common.hpp"
#include "vsr/mapped_array.hpp"

namespace vsr::io {

enum class IndexKind : std::uint32_t { flat = 1, graph = 2 };
std::string_view index_kind_name(IndexKind kind) noexcept;

inline constexpr char kMagic[8] = {'V', 'S', 'R', 'I', 'N', 'D', 'E', 'X'};
inline constexpr std::uint32_t kFormatVersion = 1;
inline constexpr std::size_t kHeaderBytes = 64;
inline constexpr std::size_t kEntryBytes = 64;
inline constexpr std::size_t kMaxSectionName = 31;
inline constexpr std::size_t kAlign = 64;

// CRC-32C (Castagnoli); hardware instruction where the CPU has it. crc32c("123456789") == 0xE3069283.
std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc = 0) noexcept;
// The portable table-driven version (reference for tests).
std::uint32_t crc32c_portable(const void* data, std::size_t n, std::uint32_t crc = 0) noexcept;

// Collects sections and writes them as one file. Section data is referenced, not copied: it must
// stay valid until write() returns.
class FileWriter {
 public:
  FileWriter(IndexKind kind, std::uint32_t kind_version) : kind_(kind), kind_version_(kind_version) {}

  // Names must be unique, non-empty, at most 31 bytes.
  Status add(std::string name, const void* data, std::size_t bytes);
  // Same, for data the writer should own (small metadata built on the fly).
  Status add_owned(std::string name, std::vector<std::uint8_t> bytes);

  Status write(const std::string& path) const;

 private:
  struct Pending {
    std::string name;
    const void* data;
    std::size_t bytes;
  };
  IndexKind kind_;
  std::uint32_t kind_version_;
  std::vector<Pending> sections_;
  std::vector<std::shared_ptr<std::vector<std::uint8_t>>> owned_;
};

struct Section {
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
};

// An opened index file: memory-mapped (pages load on demand, so files larger than RAM can be
// served) or read fully into memory. Sections point into it; indexes that serve from a mapping
// hold a shared_ptr to keep it alive.
class FileReader {
 public:
  // verify = true checks every section's CRC now (reads the whole file once); the header and the
  // section table are always checked.
  static Result<std::shared_ptr<FileReader>> open(const std::string& path, bool use_mmap, bool verify);
  ~FileReader();
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;

  IndexKind kind() const noexcept { return kind_; }
  std::uint32_t kind_version() const noexcept { return kind_version_; }
  bool mapped() const noexcept { return map_ != nullptr; }
  const std::string& path() const noexcept { return path_; }
  bool has(std::string_view name) const noexcept;
  // For a mapped file: an error (naming the file) when it now has another size or modification
  // time than when it was opened, i.e. it was written in place, so the mapping no longer holds
  // what was loaded (and reading past a new end would raise SIGBUS). Always fine for a file read
  // into memory. One fstat call.
  Status check_unchanged() const;
  // The named section; an error naming the file and section when absent, or when expect_bytes
  // (if not SIZE_MAX) differs from its size.
  Result<Section> section(std::string_view name, std::size_t expect_bytes = SIZE_MAX) const;

 private:
  FileReader() = default;
  Status parse(bool verify);

  struct Entry {
    std::string name;
    std::uint64_t offset, size;
    std::uint32_t crc;
  };
  std::string path_;
  IndexKind kind_ = IndexKind::flat;
  std::uint32_t kind_version_ = 0;
  void* map_ = nullptr;
  std::size_t map_bytes_ = 0;
  int fd_ = -1;  // kept open while mapped, for check_unchanged
  std::int64_t mtime_sec_ = 0, mtime_nsec_ = 0;
  std::vector<std::uint8_t, CacheAlignedAllocator<std::uint8_t>> buffer_;  // a file read into memory
  const std::uint8_t* bytes_ = nullptr;
  std::size_t size_ = 0;
  std::vector<Entry> entries_;
};

// The index kind recorded in a file (reads and checks the header only).
Result<IndexKind> peek_kind(const std::string& path);

}  // namespace vsr::io

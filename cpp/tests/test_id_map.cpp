// IdMap against std::unordered_map under random inserts, lookups and erases (erase's backward
// shift is the subtle part: every id left in a probe run must stay reachable).
#include <random>
#include <unordered_map>

#include "test_harness.hpp"
#include "vsr/id_map.hpp"

using vsr::IdMap;
using vsr::idx_t;

namespace {

void check_same(const IdMap<std::uint32_t>& map, const std::unordered_map<idx_t, std::uint32_t>& ref, idx_t id_range) {
  CHECK(map.size() == ref.size());
  for (idx_t id = 0; id < id_range; ++id) {
    auto it = ref.find(id);
    const auto* e = map.find(id);
    if (it == ref.end()) {
      CHECK(e == map.end());
      CHECK(map.count(id) == 0);
    } else {
      CHECK(e != map.end() && e->first == id && e->second == it->second);
      CHECK(map.count(id) == 1 && map.at(id) == it->second);
    }
  }
}

}  // namespace

TEST(id_map_matches_unordered_map_under_random_operations) {
  for (idx_t id_range : {idx_t(40), idx_t(3000)}) {  // dense collisions, and a sparser table
    std::mt19937_64 rng(7 + std::uint64_t(id_range));
    IdMap<std::uint32_t> map;
    std::unordered_map<idx_t, std::uint32_t> ref;
    for (int step = 0; step < 20000; ++step) {
      const idx_t id = idx_t(rng() % std::uint64_t(id_range));
      const std::uint32_t value = std::uint32_t(rng());
      switch (rng() % 3) {
        case 0: {
          const bool inserted = map.emplace(id, value).second;
          CHECK(inserted == ref.emplace(id, value).second);
          break;
        }
        case 1:
          CHECK(map.erase(id) == (ref.erase(id) == 1));
          break;
        default:
          map[id] = value;
          ref[id] = value;
      }
      if (step % 997 == 0) check_same(map, ref, id_range);
    }
    check_same(map, ref, id_range);
    for (idx_t id = 0; id < id_range; ++id) map.erase(id);
    CHECK(map.size() == 0 && map.find(0) == map.end());
  }
}

TEST(id_map_large_ids_reserve_and_errors) {
  IdMap<std::size_t> map;
  map.reserve(1000);
  const idx_t big = idx_t(1) << 62;
  for (idx_t i = 0; i < 1000; ++i) CHECK(map.emplace(big + i * 1000003, std::size_t(i)).second);
  for (idx_t i = 0; i < 1000; ++i) CHECK(map.at(big + i * 1000003) == std::size_t(i));
  CHECK(map.find(-1) == map.end());
  CHECK(map.count(5) == 0);
  bool threw = false;
  try {
    (void)map.at(5);
  } catch (const std::out_of_range&) {
    threw = true;
  }
  CHECK(threw);
  threw = false;
  try {
    map.emplace(-3, 0);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
}

VSR_TEST_MAIN

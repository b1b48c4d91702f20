#!/usr/bin/env bash
# Builds the C++ core and its tests with ThreadSanitizer (the VSR_SANITIZE_THREAD CMake option)
# in build/tsan and runs the tests that exercise threads: the pool, concurrent search with
# add/remove on the exact and the graph index (with sessions), the stress test (writes, saves,
# sessions and group refinements from several threads, phase by phase), and exact search on every
# kernel path with several threads. Any data race fails the run.
#
#   bash scripts/tsan.sh            # configure, build (2 jobs), run
#   JOBS=8 bash scripts/tsan.sh     # more build jobs
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build/tsan
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVSR_SANITIZE_THREAD=ON >/dev/null
cmake --build "$BUILD" -j "${JOBS:-2}" --target test_concurrency test_graph_concurrency test_stress test_flat_index
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
for t in test_concurrency test_graph_concurrency test_stress test_flat_index; do
  echo "::: $t under ThreadSanitizer"
  "$BUILD/cpp/tests/$t"
done
echo "::: ThreadSanitizer: no races reported"

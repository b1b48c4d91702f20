// A process-wide persistent thread pool. Creating threads per call costs tens of microseconds,
// which dominates small-batch search latency; these workers are created once and sleep between
// jobs.
//
// Any number of threads may submit jobs at the same time, and a task may itself submit a job
// (the submitter always works on its own job, so nesting cannot deadlock). In a child process
// after fork() the pool starts empty and grows again on demand.
//
// Submitting never fails on its own: when the pool cannot take a job (no memory for its
// bookkeeping, no new thread), the caller runs every task itself. Index writers rely on this: once
// they start committing a change, the tasks that do it run.
#pragma once

#include <algorithm>
#include <cstddef>

namespace vsr {

// A non-owning reference to a callable taking a task number: passing one allocates nothing
// (a std::function holding a lambda with a few captures would), and the callable must outlive
// the call it is passed to (a lambda written in the call does).
class TaskFn {
 public:
  template <typename F>
  TaskFn(const F& fn) noexcept  // NOLINT(google-explicit-constructor): lambdas convert implicitly
      : object_(&fn), call_([](const void* object, std::size_t task) { (*static_cast<const F*>(object))(task); }) {}
  void operator()(std::size_t task) const { call_(object_, task); }

 private:
  const void* object_;
  void (*call_)(const void*, std::size_t);
};

// Worker count for a request: requested > 0 wins, else the hardware concurrency.
int resolve_threads(int requested) noexcept;

// A call's thread count: its own request when > 0, else the index's setting (then hardware).
inline int resolve_threads(int requested, int index_setting) noexcept {
  return resolve_threads(requested > 0 ? requested : index_setting);
}

// Runs fn(task) for every task in [0, n_tasks) on up to `threads` threads (the caller counts as
// one). Returns when all tasks are done; rethrows the first exception a task threw (the other
// tasks still run).
void parallel_for(std::size_t n_tasks, int threads, TaskFn fn);

// fn(begin, end) over at most `threads` contiguous chunks of [0, n).
template <typename Fn>
void parallel_for_chunks(std::size_t n, int threads, Fn&& fn) {
  if (n == 0) return;
  const std::size_t workers = std::min<std::size_t>(threads > 0 ? std::size_t(threads) : 1, n);
  const std::size_t chunk = (n + workers - 1) / workers;
  const std::size_t tasks = (n + chunk - 1) / chunk;
  parallel_for(tasks, int(workers), [&](std::size_t t) { fn(t * chunk, std::min(n, (t + 1) * chunk)); });
}

}  // namespace vsr

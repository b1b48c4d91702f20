#include "vsr/parallel.hpp"

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace vsr {

int resolve_threads(int requested) noexcept {
  if (requested > 0) return requested;
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : int(hc);
}

namespace {

// Upper bound on pool workers, whatever a caller asks for.
constexpr std::size_t kMaxWorkers = 256;

struct Job {
  explicit Job(const TaskFn& task) : fn(task) {}
  TaskFn fn;
  std::size_t n;
  std::size_t helpers_wanted;
  std::atomic<std::size_t> next{0};
  std::atomic<std::size_t> done{0};
  std::size_t helpers_joined = 0;  // guarded by the pool mutex
  std::mutex m;
  std::condition_variable finished;
  std::exception_ptr error;  // guarded by m
};

// Runs every task on the calling thread; rethrows the first exception after all have run.
void run_inline(std::size_t n_tasks, const TaskFn& fn) {
  std::exception_ptr error;
  for (std::size_t i = 0; i < n_tasks; ++i) {
    try {
      fn(i);
    } catch (...) {
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

class ThreadPool {
 public:
  void run(std::size_t n_tasks, int threads, const TaskFn& fn) {
    std::shared_ptr<Job> job;
    try {
      job = std::make_shared<Job>(fn);
      job->n = n_tasks;
      job->helpers_wanted = std::min<std::size_t>({std::size_t(threads) - 1, n_tasks - 1, kMaxWorkers});
      std::lock_guard<std::mutex> lock(mu_);
      grow(job->helpers_wanted);  // may start fewer workers than wanted: the job still runs
      queue_.push_back(job);
    } catch (...) {
      // No room for the job's bookkeeping: the caller does all the work.
      run_inline(n_tasks, fn);
      return;
    }
    if (job->helpers_wanted == 1)
      wake_.notify_one();
    else
      wake_.notify_all();
    work_on(*job);
    {
      std::unique_lock<std::mutex> lock(job->m);
      job->finished.wait(lock, [&] { return job->done.load(std::memory_order_acquire) == job->n; });
    }
    {
      // Helpers that never came must not find a finished job later.
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = queue_.begin(); it != queue_.end(); ++it)
        if (it->get() == job.get()) {
          queue_.erase(it);
          break;
        }
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  // Caller holds mu_. Stops early, without an error, when a thread cannot be started.
  void grow(std::size_t wanted) noexcept {
    try {
      workers_.reserve(wanted);
      while (workers_.size() < wanted) {
        std::thread worker([this] { worker_loop(); });
        worker.detach();  // the pool lives for the whole process
        workers_.push_back(std::move(worker));
      }
    } catch (...) {
    }
  }

  void worker_loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return !queue_.empty(); });
        job = queue_.front();
        if (++job->helpers_joined >= job->helpers_wanted) queue_.pop_front();
      }
      work_on(*job);
    }
  }

  static void work_on(Job& job) {
    for (;;) {
      const std::size_t i = job.next.fetch_add(1, std::memory_order_relaxed);
      if (i >= job.n) return;
      try {
        job.fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(job.m);
        if (!job.error) job.error = std::current_exception();
      }
      if (job.done.fetch_add(1, std::memory_order_acq_rel) + 1 == job.n) {
        std::lock_guard<std::mutex> lock(job.m);
        job.finished.notify_all();
      }
    }
  }

  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<std::thread> workers_;
};

// Intentionally never destroyed: detached workers may be asleep in it at process exit.
std::atomic<ThreadPool*> g_pool{nullptr};
std::once_flag g_atfork_once;

void reset_after_fork() noexcept {
  // The child has none of the parent's workers and the pool's mutex may be held by a thread that
  // no longer exists: abandon that pool and start a fresh one on demand.
  g_pool.store(nullptr);
}

ThreadPool& pool() {
  std::call_once(g_atfork_once, [] { ::pthread_atfork(nullptr, nullptr, reset_after_fork); });
  ThreadPool* p = g_pool.load(std::memory_order_acquire);
  if (p != nullptr) return *p;
  auto* fresh = new ThreadPool();  // NOLINT: process-lifetime singleton, see g_pool
  if (g_pool.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;
  return *p;
}

}  // namespace

void parallel_for(std::size_t n_tasks, int threads, TaskFn fn) {
  if (n_tasks == 0) return;
  if (threads <= 1 || n_tasks == 1) {
    run_inline(n_tasks, fn);
    return;
  }
  ThreadPool* p = nullptr;
  try {
    p = &pool();
  } catch (...) {
    run_inline(n_tasks, fn);
    return;
  }
  p->run(n_tasks, threads, fn);
}

}  // namespace vsr

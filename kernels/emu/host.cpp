// tbert's emulated CUDA device, host half: device memory (poisoned, registered, quarantined after free), streams,
// events, copies, memsets, errors and the work queue that runs device work only when CUDA's ordering says it
// must have run. What is promised is written at the top of include/emu_host.h; this file implements it.
//
// The queue. Every piece of device work (a kernel from the execution half via tbert_emu_enqueue, a copy, a memset,
// a cuBLAS call, an event record, an event wait) becomes an Item with an increasing id and the ids it depends on:
//   - the previous item of its stream (stream order);
//   - on the legacy stream: the last item of every blocking stream; on a blocking stream: the last legacy item;
//   - an event wait: the item that recorded the event.
// Nothing runs when it is queued. A synchronizing call takes the closure of what it waits for (the dependencies,
// transitively, that have not run) and runs it, always choosing, among the items whose dependencies have run, the
// most recently queued one. So work whose order the program never established runs in the order least likely to
// match the program's hopes, and a result read before its producer is synchronized is still poison.
//
// Locks: `mu` guards every table and is never held while work runs (a kernel calls tbert_emu_find_allocation and
// tbert_emu_fault); `run_mu` lets one thread at a time run work, as a device has one queue engine.

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <queue>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define TBERT_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TBERT_EMU_ASAN 1
#endif
#endif
#ifdef TBERT_EMU_ASAN
#include <sanitizer/asan_interface.h>
#endif

// (after the standard headers: the device half defines CUDA qualifier macros such as __noinline__)
#include "cuda_runtime.h"

struct CUstream_st {
    unsigned flags = 0;     // cudaStreamDefault (blocking) or cudaStreamNonBlocking
    uint64_t last = 0;      // id of the last item queued on it (0: none)
    const char *label = ""; // "legacy" / "per-thread" for the built-in ones
};

namespace {

struct EventTime {
    bool done = false;
    std::chrono::steady_clock::time_point at;
};

} // namespace

struct CUevent_st {
    unsigned flags = 0;
    uint64_t rec = 0; // id of the marker item of the last cudaEventRecord (0: never recorded)
    std::shared_ptr<EventTime> time;
};

namespace {

constexpr unsigned char kPoison = 0xFF;                // NaN floats, -1 ints
constexpr size_t kQuarantineBytes = (size_t)256 << 20; // freed blocks kept poisoned until this much is held
constexpr size_t kAlign = 256;                         // cudaMalloc's alignment

struct Alloc {
    size_t size;
    bool device;
};

struct Item {
    uint64_t id;
    std::vector<uint64_t> deps;
    std::function<void()> run;
    std::function<void()> drop;
    std::string what;
};

struct State {
    std::mutex mu;
    std::recursive_mutex run_mu;
    // memory
    std::map<uintptr_t, Alloc> live;  // base -> block
    std::map<uintptr_t, Alloc> freed; // quarantined base -> block
    std::deque<void *> quarantine;    // oldest first
    size_t quarantine_bytes = 0, device_bytes = 0, total_bytes = (size_t)80 << 30;
    // streams, events, work
    CUstream_st legacy, per_thread;
    std::set<CUstream_st *> streams; // created ones and per_thread (legacy is separate)
    std::set<CUevent_st *> events;
    std::vector<uint64_t> orphans; // last items of destroyed blocking streams: the legacy stream still waits for them
    uint64_t next_id = 1;
    std::unordered_map<uint64_t, Item *> pending;
    // errors
    cudaError_t sticky = cudaSuccess;
    std::string last_fault;
    bool abort_on_fault = false;

    State() {
        legacy.label = "legacy default stream";
        per_thread.label = "per-thread default stream";
        streams.insert(&per_thread);
        if (const char *m = std::getenv("TBERT_EMU_MEMORY_BYTES")) {
            char *end = nullptr;
            unsigned long long v = std::strtoull(m, &end, 10);
            if (end != m && *end == '\0' && v > 0) total_bytes = (size_t)v;
        }
        const char *a = std::getenv("TBERT_EMU_ABORT");
        abort_on_fault = a && std::strcmp(a, "1") == 0;
    }
};

State &S() {
    static State *s = new State; // never destroyed: threads and atexit handlers may still call in
    return *s;
}

thread_local cudaError_t t_last_error = cudaSuccess;
thread_local int t_device = 0;

// Records e as the calling thread's last error (CUDA does this for every failing call) and returns it.
cudaError_t fail(cudaError_t e) {
    if (e != cudaSuccess) t_last_error = e;
    return e;
}

cudaError_t sticky() {
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    return s.sticky;
}

std::string vformat(const char *fmt, va_list ap) {
    char buf[1024];
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    return buf;
}

// A misuse found at a call (not a device fault): one line on stderr, kept as the last report, not sticky.
void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void report(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::string m = vformat(fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "tbert-emu: %s\n", m.c_str());
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    s.last_fault = m;
}

// ---- memory registry ----

// The live block holding [p, p + bytes) (caller holds mu), or nullptr.
const std::pair<const uintptr_t, Alloc> *find_locked(State &s, const void *p, size_t bytes, const std::map<uintptr_t, Alloc> &m) {
    uintptr_t a = (uintptr_t)p;
    auto it = m.upper_bound(a);
    if (it == m.begin()) return nullptr;
    --it;
    if (a < it->first) return nullptr;
    size_t off = a - it->first;
    (void)s;
    if (off > it->second.size || bytes > it->second.size - off) return nullptr;
    return &*it;
}

// Says what [p, p + bytes) is, for messages (caller holds mu).
std::string describe_locked(State &s, const void *p, size_t bytes) {
    char buf[256];
    uintptr_t a = (uintptr_t)p;
    for (int pass = 0; pass < 2; pass++) {
        const std::map<uintptr_t, Alloc> &m = pass == 0 ? s.live : s.freed;
        auto it = m.upper_bound(a);
        if (it == m.begin()) continue;
        --it;
        if (a < it->first || a - it->first >= it->second.size + 4096) continue;
        size_t off = a - it->first;
        std::snprintf(buf, sizeof buf, "[%p, +%zu) starts %zu bytes into a %s%zu-byte %s block at %p%s", p, bytes, off,
                      pass ? "FREED " : "", it->second.size, it->second.device ? "device" : "pinned host",
                      (void *)it->first,
                      pass ? " (use after free)"
                           : off >= it->second.size            ? " (past its end)"
                           : bytes > it->second.size - off     ? " and runs past its end"
                                                               : "");
        return buf;
    }
    std::snprintf(buf, sizeof buf, "[%p, +%zu) is not in any device or pinned allocation", p, bytes);
    return buf;
}

enum class Mem { Device, Pinned, Pageable };

Mem classify_locked(State &s, const void *p) {
    auto *b = find_locked(s, p, 0, s.live);
    if (!b) return Mem::Pageable;
    return b->second.device ? Mem::Device : Mem::Pinned;
}

// Checks that [p, p + bytes) lies in one live block of the given kind (device or pinned); "" when it does,
// else the reason (caller holds mu).
std::string check_range_locked(State &s, const void *p, size_t bytes, bool device) {
    auto *b = find_locked(s, p, bytes, s.live);
    if (b && b->second.device == device) return "";
    if (b) return std::string(describe_locked(s, p, bytes)) + (device ? ": host memory where device memory is needed" : ": device memory where host memory is needed");
    return describe_locked(s, p, bytes);
}

void *alloc_block(size_t size, bool device, cudaError_t *e) {
    State &s = S();
    {
        std::lock_guard<std::mutex> g(s.mu);
        if (device && size > s.total_bytes - std::min(s.total_bytes, s.device_bytes)) {
            *e = cudaErrorMemoryAllocation;
            return nullptr;
        }
    }
    void *p = nullptr;
    if (posix_memalign(&p, kAlign, size) != 0 || !p) {
        *e = cudaErrorMemoryAllocation;
        return nullptr;
    }
    std::memset(p, kPoison, size);
    std::lock_guard<std::mutex> g(s.mu);
    s.live[(uintptr_t)p] = Alloc{size, device};
    if (device) s.device_bytes += size;
    *e = cudaSuccess;
    return p;
}

cudaError_t free_block(void *p, bool device, const char *fn) {
    State &s = S();
    std::vector<void *> evict;
    {
        std::lock_guard<std::mutex> g(s.mu);
        auto it = s.live.find((uintptr_t)p);
        if (it == s.live.end() || it->second.device != device) {
            std::string why = it != s.live.end() ? (device ? "a pinned host block, not device memory" : "device memory, not a pinned host block")
                                                 : describe_locked(s, p, 0);
            char head[96];
            std::snprintf(head, sizeof head, "%s(%p): ", fn, p);
            s.last_fault = head + why;
            std::fprintf(stderr, "tbert-emu: %s\n", s.last_fault.c_str());
            return fail(device ? cudaErrorInvalidDevicePointer : cudaErrorInvalidValue);
        }
        Alloc a = it->second;
        s.live.erase(it);
        if (device) s.device_bytes -= a.size;
#ifdef TBERT_EMU_ASAN
        ASAN_POISON_MEMORY_REGION(p, a.size);
#else
        std::memset(p, kPoison, a.size);
#endif
        s.freed[(uintptr_t)p] = a;
        s.quarantine.push_back(p);
        s.quarantine_bytes += a.size;
        while (s.quarantine_bytes > kQuarantineBytes && s.quarantine.size() > 1) {
            void *q = s.quarantine.front();
            s.quarantine.pop_front();
            auto f = s.freed.find((uintptr_t)q);
            s.quarantine_bytes -= f->second.size;
#ifdef TBERT_EMU_ASAN
            ASAN_UNPOISON_MEMORY_REGION(q, f->second.size);
#endif
            s.freed.erase(f);
            evict.push_back(q);
        }
    }
    for (void *q : evict) std::free(q);
    return cudaSuccess;
}

// ---- the work queue ----

CUstream_st *resolve_locked(State &s, cudaStream_t st) {
    if (st == nullptr || st == cudaStreamLegacy) return &s.legacy;
    if (st == cudaStreamPerThread) return &s.per_thread;
    return s.streams.count(st) ? st : nullptr;
}

bool is_pending_locked(State &s, uint64_t id) { return id != 0 && s.pending.count(id) != 0; }

// Queues an item on stream q (resolved, caller holds mu); returns its id.
uint64_t enqueue_locked(State &s, CUstream_st *q, std::function<void()> run, std::function<void()> drop, std::string what,
                        uint64_t extra_dep = 0) {
    Item *it = new Item;
    it->id = s.next_id++;
    if (is_pending_locked(s, q->last)) it->deps.push_back(q->last);
    if (q == &s.legacy) {
        for (CUstream_st *b : s.streams)
            if (!(b->flags & cudaStreamNonBlocking) && is_pending_locked(s, b->last)) it->deps.push_back(b->last);
        s.orphans.erase(std::remove_if(s.orphans.begin(), s.orphans.end(), [&](uint64_t id) { return !is_pending_locked(s, id); }),
                        s.orphans.end());
        for (uint64_t id : s.orphans) it->deps.push_back(id);
    } else if (!(q->flags & cudaStreamNonBlocking) && is_pending_locked(s, s.legacy.last)) {
        it->deps.push_back(s.legacy.last);
    }
    if (is_pending_locked(s, extra_dep)) it->deps.push_back(extra_dep);
    it->run = std::move(run);
    it->drop = std::move(drop);
    it->what = std::move(what);
    q->last = it->id;
    s.pending[it->id] = it;
    return it->id;
}

// Runs every pending item that the targets depend on (transitively), and the targets: among the items whose
// dependencies have all run, the most recently queued first. Items queued meanwhile by other threads wait.
void run_closure(const std::vector<uint64_t> &targets) {
    State &s = S();
    std::lock_guard<std::recursive_mutex> rg(s.run_mu);
    std::vector<Item *> order;
    {
        std::lock_guard<std::mutex> g(s.mu);
        std::unordered_map<uint64_t, int> indeg;
        std::unordered_map<uint64_t, std::vector<uint64_t>> users;
        std::vector<uint64_t> stack;
        for (uint64_t t : targets)
            if (is_pending_locked(s, t) && !indeg.count(t)) indeg[t] = 0, stack.push_back(t);
        while (!stack.empty()) {
            uint64_t id = stack.back();
            stack.pop_back();
            for (uint64_t d : s.pending[id]->deps) {
                if (!is_pending_locked(s, d)) continue;
                indeg[id]++;
                users[d].push_back(id);
                if (!indeg.count(d)) indeg[d] = 0, stack.push_back(d);
            }
        }
        std::priority_queue<uint64_t> ready; // max id first: the most recently queued
        for (auto &kv : indeg)
            if (kv.second == 0) ready.push(kv.first);
        while (!ready.empty()) {
            uint64_t id = ready.top();
            ready.pop();
            order.push_back(s.pending[id]);
            for (uint64_t u : users[id])
                if (--indeg[u] == 0) ready.push(u);
        }
    }
    for (Item *it : order) {
        if (sticky() == cudaSuccess && it->run) it->run(); // after a fault the device runs nothing more
        if (it->drop) it->drop();
        {
            std::lock_guard<std::mutex> g(S().mu);
            s.pending.erase(it->id);
        }
        delete it;
    }
}

std::vector<uint64_t> all_pending() {
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    std::vector<uint64_t> ids;
    for (auto &kv : s.pending) ids.push_back(kv.first);
    return ids;
}

const char *kind_name(cudaMemcpyKind k) {
    switch (k) {
    case cudaMemcpyHostToHost: return "host to host";
    case cudaMemcpyHostToDevice: return "host to device";
    case cudaMemcpyDeviceToHost: return "device to host";
    case cudaMemcpyDeviceToDevice: return "device to device";
    default: return "default";
    }
}

// One side of a copy: where it is and whether the emulator can check it (device and pinned memory are
// registered; pageable host memory is not).
struct Side {
    const void *p;
    Mem mem;
};

// Checks a side of a copy when the copy runs; "" when fine.
std::string recheck(const Side &x, size_t n) {
    if (x.mem == Mem::Pageable) return "";
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    return check_range_locked(s, x.p, n, x.mem == Mem::Device);
}

// cudaMemcpy / cudaMemcpyAsync. sync: the synchronous API (cudaMemcpy) rather than the Async one.
cudaError_t memcpy_impl(void *dst, const void *src, size_t n, cudaMemcpyKind kind, cudaStream_t stream, bool sync,
                        const char *fn) {
    State &s = S();
    if (cudaError_t e = sticky()) return fail(e);
    if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) return fail(cudaErrorInvalidMemcpyDirection);
    if (n == 0) return cudaSuccess;
    if (!dst || !src) return fail(cudaErrorInvalidValue);
    Side d{dst, Mem::Pageable}, sr{src, Mem::Pageable};
    std::string what;
    uint64_t id;
    bool wait;
    {
        std::unique_lock<std::mutex> g(s.mu);
        CUstream_st *q = resolve_locked(s, stream);
        if (!q) return fail(cudaErrorInvalidResourceHandle);
        d.mem = classify_locked(s, dst);
        sr.mem = classify_locked(s, src);
        bool dst_dev = kind == cudaMemcpyDefault ? d.mem == Mem::Device : (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice);
        bool src_dev = kind == cudaMemcpyDefault ? sr.mem == Mem::Device : (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice);
        // Device sides must lie in one live device block; host sides must not be device memory, and a host side
        // in a pinned block must fit in it.
        std::string bad;
        const char *which = "";
        if (dst_dev || d.mem != Mem::Pageable) {
            if (!dst_dev && d.mem == Mem::Device) bad = describe_locked(s, dst, n) + ": device memory, but the copy kind says host";
            else bad = check_range_locked(s, dst, n, dst_dev);
            which = "destination";
        }
        if (bad.empty() && (src_dev || sr.mem != Mem::Pageable)) {
            if (!src_dev && sr.mem == Mem::Device) bad = describe_locked(s, src, n) + ": device memory, but the copy kind says host";
            else bad = check_range_locked(s, src, n, src_dev);
            which = "source";
        }
        if (!bad.empty()) {
            g.unlock();
            report("%s(%p <- %p, %zu bytes, %s): %s %s", fn, dst, src, n, kind_name(kind), which, bad.c_str());
            return fail(cudaErrorInvalidValue);
        }
        char w[160];
        std::snprintf(w, sizeof w, "%s(%p <- %p, %zu bytes, %s) on the %s", fn, dst, src, n, kind_name(kind),
                      sync ? "legacy default stream" : q->label);
        what = w;
        // The source is read at the call when it is pageable host memory (the driver stages it); pinned and
        // device sources are read when the copy runs.
        std::shared_ptr<std::vector<unsigned char>> staged;
        if (!src_dev && sr.mem == Mem::Pageable)
            staged = std::make_shared<std::vector<unsigned char>>((const unsigned char *)src, (const unsigned char *)src + n);
        auto run = [d, sr, n, staged, what]() {
            std::string why = recheck(d, n);
            if (why.empty() && !staged) why = recheck(sr, n);
            if (!why.empty()) {
                tbert_emu_fault(cudaErrorIllegalAddress, "%s: when it ran: %s", what.c_str(), why.c_str());
                return;
            }
            std::memcpy(const_cast<void *>(d.p), staged ? staged->data() : sr.p, n);
        };
        // The host waits for the copy: host to host always; cudaMemcpy to host memory, and cudaMemcpy from pinned
        // memory ("synchronous with respect to the host"). Everything else only queues.
        wait = (!dst_dev && !src_dev) || (sync && !dst_dev) || (sync && sr.mem == Mem::Pinned);
        id = enqueue_locked(s, sync ? &s.legacy : q, run, nullptr, what);
    }
    if (wait) {
        run_closure({id});
        if (cudaError_t e = sticky()) return fail(e);
    }
    return cudaSuccess;
}

cudaError_t memset_impl(void *p, int value, size_t n, cudaStream_t stream, bool sync, const char *fn) {
    State &s = S();
    if (cudaError_t e = sticky()) return fail(e);
    if (n == 0) return cudaSuccess;
    uint64_t id;
    bool pinned;
    {
        std::unique_lock<std::mutex> g(s.mu);
        CUstream_st *q = resolve_locked(s, stream);
        if (!q) return fail(cudaErrorInvalidResourceHandle);
        auto *b = find_locked(s, p, n, s.live);
        if (!b) {
            std::string why = describe_locked(s, p, n);
            g.unlock();
            report("%s(%p, %d, %zu bytes): %s", fn, p, value, n, why.c_str());
            return fail(cudaErrorInvalidValue);
        }
        pinned = !b->second.device;
        Side x{p, pinned ? Mem::Pinned : Mem::Device};
        char w[128];
        std::snprintf(w, sizeof w, "%s(%p, %d, %zu bytes)", fn, p, value, n);
        std::string what = w;
        auto run = [x, value, n, what]() {
            std::string why = recheck(x, n);
            if (!why.empty()) {
                tbert_emu_fault(cudaErrorIllegalAddress, "%s: when it ran: %s", what.c_str(), why.c_str());
                return;
            }
            std::memset(const_cast<void *>(x.p), value, n);
        };
        id = enqueue_locked(s, sync ? &s.legacy : q, run, nullptr, what);
    }
    if (pinned) { // memset of pinned host memory is synchronous
        run_closure({id});
        if (cudaError_t e = sticky()) return fail(e);
    }
    return cudaSuccess;
}

} // namespace

// ======================================================================================================
// the contract with the execution half (emu_types.h)

extern "C" cudaError_t tbert_emu_enqueue(cudaStream_t st, tbert_emu_work_fn run, void *ctx, tbert_emu_work_fn drop,
                                         const char *what) {
    State &s = S();
    std::unique_lock<std::mutex> g(s.mu);
    CUstream_st *q = resolve_locked(s, st);
    cudaError_t e = !q ? cudaErrorInvalidResourceHandle : s.sticky;
    if (e != cudaSuccess) {
        g.unlock();
        if (drop) drop(ctx);
        return fail(e);
    }
    enqueue_locked(s, q, [run, ctx]() { if (run) run(ctx); }, [drop, ctx]() { if (drop) drop(ctx); },
                   what ? what : "work");
    return cudaSuccess;
}

extern "C" int tbert_emu_find_allocation(const void *p, size_t bytes, const void **base, size_t *size, int *is_device) {
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    auto *b = find_locked(s, p, bytes, s.live);
    if (!b) return 0;
    if (base) *base = (const void *)b->first;
    if (size) *size = b->second.size;
    if (is_device) *is_device = b->second.device ? 1 : 0;
    return 1;
}

extern "C" void tbert_emu_set_launch_error(cudaError_t e) { t_last_error = e; }

extern "C" void tbert_emu_fault(cudaError_t e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::string m = vformat(fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "tbert-emu: %s\n", m.c_str());
    std::fflush(stderr);
    State &s = S();
    bool abort_now;
    {
        std::lock_guard<std::mutex> g(s.mu);
        s.last_fault = m;
        if (s.sticky == cudaSuccess) s.sticky = e == cudaSuccess ? cudaErrorUnknown : e;
        abort_now = s.abort_on_fault;
    }
    if (abort_now) std::abort();
}

extern "C" const char *tbert_emu_last_fault(void) {
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    thread_local std::string copy;
    copy = s.last_fault;
    return copy.c_str();
}

// Also discards the work still queued (a faulted device never runs it), so a test starts on an idle device.
extern "C" void tbert_emu_reset_faults(void) {
    State &s = S();
    std::lock_guard<std::recursive_mutex> rg(s.run_mu); // not while another thread runs work
    std::vector<Item *> items;
    {
        std::lock_guard<std::mutex> g(s.mu);
        if (s.sticky != cudaSuccess) {
            for (auto &kv : s.pending) items.push_back(kv.second);
            s.pending.clear();
        }
        s.sticky = cudaSuccess;
        s.last_fault.clear();
    }
    for (Item *it : items) {
        if (it->drop) it->drop();
        delete it;
    }
    t_last_error = cudaSuccess;
}

extern "C" size_t tbert_emu_pending_work(void) {
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    return s.pending.size();
}

extern "C" int tbert_emu_is_freed(const void *p) {
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    return find_locked(s, p, 0, s.freed) != nullptr;
}

// ======================================================================================================
// errors

extern "C" const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
#define N(x) case x: return #x;
        N(cudaSuccess) N(cudaErrorInvalidValue) N(cudaErrorMemoryAllocation) N(cudaErrorInitializationError)
        N(cudaErrorInvalidConfiguration) N(cudaErrorInvalidPitchValue) N(cudaErrorInvalidDevicePointer)
        N(cudaErrorInvalidMemcpyDirection) N(cudaErrorNoDevice) N(cudaErrorInvalidDevice)
        N(cudaErrorInvalidResourceHandle) N(cudaErrorNotReady) N(cudaErrorIllegalAddress)
        N(cudaErrorLaunchOutOfResources) N(cudaErrorAssert) N(cudaErrorIllegalInstruction) N(cudaErrorLaunchFailure)
        N(cudaErrorUnknown)
#undef N
    }
    return "cudaErrorUnrecognized";
}

extern "C" const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidPitchValue: return "invalid pitch argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorAssert: return "device-side assert triggered";
    case cudaErrorIllegalInstruction: return "an illegal instruction was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorUnknown: return "unknown error";
    }
    return "unrecognized error code";
}

extern "C" cudaError_t cudaGetLastError(void) {
    if (cudaError_t e = sticky()) return e;
    cudaError_t e = t_last_error;
    t_last_error = cudaSuccess;
    return e;
}

extern "C" cudaError_t cudaPeekAtLastError(void) {
    if (cudaError_t e = sticky()) return e;
    return t_last_error;
}

// ======================================================================================================
// devices

extern "C" cudaError_t cudaGetDeviceCount(int *count) {
    if (!count) return fail(cudaErrorInvalidValue);
    *count = 1;
    return cudaSuccess;
}

extern "C" cudaError_t cudaSetDevice(int device) {
    if (cudaError_t e = sticky()) return fail(e);
    if (device != 0) return fail(cudaErrorInvalidDevice);
    t_device = device;
    return cudaSuccess;
}

extern "C" cudaError_t cudaGetDevice(int *device) {
    if (!device) return fail(cudaErrorInvalidValue);
    *device = t_device;
    return cudaSuccess;
}

extern "C" cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int device) {
    if (!p) return fail(cudaErrorInvalidValue);
    if (device != 0) return fail(cudaErrorInvalidDevice);
    std::memset(p, 0, sizeof *p);
    std::snprintf(p->name, sizeof p->name, "tbert emulated device");
    State &s = S();
    {
        std::lock_guard<std::mutex> g(s.mu);
        p->totalGlobalMem = s.total_bytes;
    }
    // An H100 SXM's numbers (compute capability 9.0).
    p->sharedMemPerBlock = 48 * 1024;
    p->sharedMemPerBlockOptin = 227 * 1024;
    p->sharedMemPerMultiprocessor = 228 * 1024;
    p->regsPerBlock = 65536;
    p->regsPerMultiprocessor = 65536;
    p->warpSize = 32;
    p->memPitch = (size_t)2147483647;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = 1024, p->maxThreadsDim[1] = 1024, p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647, p->maxGridSize[1] = 65535, p->maxGridSize[2] = 65535;
    p->clockRate = 1980000;
    p->totalConstMem = 65536;
    p->major = 9, p->minor = 0;
    p->textureAlignment = 512;
    p->multiProcessorCount = 132;
    p->canMapHostMemory = 1;
    p->concurrentKernels = 1;
    p->asyncEngineCount = 3;
    p->unifiedAddressing = 1;
    p->memoryClockRate = 2619000;
    p->memoryBusWidth = 5120;
    p->l2CacheSize = 50 * 1024 * 1024;
    p->maxThreadsPerMultiProcessor = 2048;
    return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceSynchronize(void) {
    if (cudaError_t e = sticky()) return fail(e);
    run_closure(all_pending());
    if (cudaError_t e = sticky()) return fail(e);
    return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceReset(void) {
    State &s = S();
    std::lock_guard<std::recursive_mutex> rg(s.run_mu);
    std::vector<Item *> items;
    std::vector<void *> blocks;
    {
        std::lock_guard<std::mutex> g(s.mu);
        for (auto &kv : s.pending) items.push_back(kv.second);
        s.pending.clear();
        for (auto &kv : s.live) blocks.push_back((void *)kv.first);
        for (void *q : s.quarantine) {
#ifdef TBERT_EMU_ASAN
            ASAN_UNPOISON_MEMORY_REGION(q, s.freed[(uintptr_t)q].size);
#endif
            blocks.push_back(q);
        }
        s.live.clear(), s.freed.clear(), s.quarantine.clear();
        s.quarantine_bytes = s.device_bytes = 0;
        for (CUstream_st *q : s.streams)
            if (q != &s.per_thread) delete q;
        s.streams.clear();
        s.streams.insert(&s.per_thread);
        s.orphans.clear();
        s.per_thread.last = s.legacy.last = 0;
        for (CUevent_st *ev : s.events) delete ev;
        s.events.clear();
        s.sticky = cudaSuccess;
        s.last_fault.clear();
    }
    for (Item *it : items) {
        if (it->drop) it->drop();
        delete it;
    }
    for (void *b : blocks) std::free(b);
    t_last_error = cudaSuccess;
    return cudaSuccess;
}

extern "C" cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    if (cudaError_t e = sticky()) return fail(e);
    if (!free_bytes || !total_bytes) return fail(cudaErrorInvalidValue);
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    *total_bytes = s.total_bytes;
    *free_bytes = s.total_bytes - std::min(s.total_bytes, s.device_bytes);
    return cudaSuccess;
}

extern "C" cudaError_t cudaDriverGetVersion(int *v) {
    if (!v) return fail(cudaErrorInvalidValue);
    *v = 13000;
    return cudaSuccess;
}

extern "C" cudaError_t cudaRuntimeGetVersion(int *v) {
    if (!v) return fail(cudaErrorInvalidValue);
    *v = 13000;
    return cudaSuccess;
}

// ======================================================================================================
// memory

extern "C" cudaError_t cudaMalloc(void **p, size_t size) {
    if (!p) return fail(cudaErrorInvalidValue);
    *p = nullptr;
    if (cudaError_t e = sticky()) return fail(e);
    if (size == 0) return cudaSuccess;
    cudaError_t e;
    *p = alloc_block(size, true, &e);
    return fail(e);
}

extern "C" cudaError_t cudaFree(void *p) {
    if (cudaError_t e = sticky()) return fail(e);
    if (!p) return cudaSuccess;
    return free_block(p, true, "cudaFree");
}

extern "C" cudaError_t cudaMallocHost(void **p, size_t size) {
    if (!p) return fail(cudaErrorInvalidValue);
    *p = nullptr;
    if (cudaError_t e = sticky()) return fail(e);
    cudaError_t e;
    *p = alloc_block(size ? size : 1, false, &e);
    return fail(e);
}

extern "C" cudaError_t cudaHostAlloc(void **p, size_t size, unsigned int flags) {
    (void)flags;
    return cudaMallocHost(p, size);
}

extern "C" cudaError_t cudaFreeHost(void *p) {
    if (cudaError_t e = sticky()) return fail(e);
    if (!p) return cudaSuccess;
    return free_block(p, false, "cudaFreeHost");
}

extern "C" cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind) {
    return memcpy_impl(dst, src, count, kind, nullptr, true, "cudaMemcpy");
}

extern "C" cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                                       cudaStream_t stream) {
    return memcpy_impl(dst, src, count, kind, stream, false, "cudaMemcpyAsync");
}

extern "C" cudaError_t cudaMemset(void *p, int value, size_t count) {
    return memset_impl(p, value, count, nullptr, true, "cudaMemset");
}

extern "C" cudaError_t cudaMemsetAsync(void *p, int value, size_t count, cudaStream_t stream) {
    return memset_impl(p, value, count, stream, false, "cudaMemsetAsync");
}

// ======================================================================================================
// streams

extern "C" cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
    if (!stream) return fail(cudaErrorInvalidValue);
    if (cudaError_t e = sticky()) return fail(e);
    if (flags & ~cudaStreamNonBlocking) return fail(cudaErrorInvalidValue);
    CUstream_st *q = new CUstream_st;
    q->flags = flags;
    q->label = flags & cudaStreamNonBlocking ? "non-blocking stream" : "blocking stream";
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    s.streams.insert(q);
    *stream = q;
    return cudaSuccess;
}

extern "C" cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }

// Work still queued on a destroyed stream runs when something waits for it, as CUDA finishes it in the background.
extern "C" cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    if (stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread || !s.streams.count(stream))
        return fail(cudaErrorInvalidResourceHandle);
    s.streams.erase(stream);
    if (!(stream->flags & cudaStreamNonBlocking) && is_pending_locked(s, stream->last)) s.orphans.push_back(stream->last);
    delete stream;
    return s.sticky != cudaSuccess ? fail(s.sticky) : cudaSuccess;
}

extern "C" cudaError_t cudaStreamGetFlags(cudaStream_t stream, unsigned int *flags) {
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    CUstream_st *q = resolve_locked(s, stream);
    if (!q) return fail(cudaErrorInvalidResourceHandle);
    if (!flags) return fail(cudaErrorInvalidValue);
    *flags = q->flags;
    return cudaSuccess;
}

// Synchronize on a queue position (a stream's last work, an event's record): run it and what it depends on.
static cudaError_t synchronize_position(cudaError_t (*position)(const void *, uint64_t *), const void *what) {
    if (cudaError_t e = sticky()) return fail(e);
    uint64_t pos;
    if (cudaError_t e = position(what, &pos)) return fail(e);
    run_closure({pos});
    if (cudaError_t e = sticky()) return fail(e);
    return cudaSuccess;
}

// Query a queue position: not ready while it is pending; saying so runs it (a real device gets there on its
// own), so a polling loop ends.
static cudaError_t query_position(cudaError_t (*position)(const void *, uint64_t *), const void *what) {
    if (cudaError_t e = sticky()) return fail(e);
    uint64_t pos;
    if (cudaError_t e = position(what, &pos)) return fail(e);
    {
        State &s = S();
        std::lock_guard<std::mutex> g(s.mu);
        if (!is_pending_locked(s, pos)) return cudaSuccess;
    }
    run_closure({pos});
    return cudaErrorNotReady;
}

// The queue position a synchronize or a query on a stream waits for (its last queued work).
static cudaError_t stream_position_of(const void *stream, uint64_t *pos) {
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    CUstream_st *q = resolve_locked(s, (cudaStream_t)const_cast<void *>(stream));
    if (!q) return cudaErrorInvalidResourceHandle;
    *pos = q->last;
    return cudaSuccess;
}

extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t stream) { return synchronize_position(stream_position_of, stream); }

extern "C" cudaError_t cudaStreamQuery(cudaStream_t stream) { return query_position(stream_position_of, stream); }

extern "C" cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    if (s.sticky != cudaSuccess) return fail(s.sticky);
    CUstream_st *q = resolve_locked(s, stream);
    if (!q || !event || !s.events.count(event)) return fail(cudaErrorInvalidResourceHandle);
    if (flags != 0) return fail(cudaErrorInvalidValue);
    // A marker on the stream that depends on the event's recorded position: all later work on the stream follows.
    if (is_pending_locked(s, event->rec)) enqueue_locked(s, q, nullptr, nullptr, "cudaStreamWaitEvent", event->rec);
    return cudaSuccess;
}

// ======================================================================================================
// events

extern "C" cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
    if (!event) return fail(cudaErrorInvalidValue);
    if (cudaError_t e = sticky()) return fail(e);
    if (flags & ~(cudaEventBlockingSync | cudaEventDisableTiming)) return fail(cudaErrorInvalidValue);
    CUevent_st *ev = new CUevent_st;
    ev->flags = flags;
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    s.events.insert(ev);
    *event = ev;
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

extern "C" cudaError_t cudaEventDestroy(cudaEvent_t event) {
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    if (!event || !s.events.count(event)) return fail(cudaErrorInvalidResourceHandle);
    s.events.erase(event);
    delete event;
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    if (s.sticky != cudaSuccess) return fail(s.sticky);
    CUstream_st *q = resolve_locked(s, stream);
    if (!q || !event || !s.events.count(event)) return fail(cudaErrorInvalidResourceHandle);
    auto t = std::make_shared<EventTime>();
    event->time = t;
    event->rec = enqueue_locked(s, q, [t]() { t->done = true, t->at = std::chrono::steady_clock::now(); }, nullptr,
                                "cudaEventRecord");
    return cudaSuccess;
}

// The queue position an event synchronize or query waits for (where it was last recorded).
static cudaError_t event_position_of(const void *ev, uint64_t *pos) {
    cudaEvent_t event = (cudaEvent_t)const_cast<void *>(ev);
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    if (!event || !s.events.count(event)) return cudaErrorInvalidResourceHandle;
    *pos = event->rec;
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventSynchronize(cudaEvent_t event) { return synchronize_position(event_position_of, event); }

extern "C" cudaError_t cudaEventQuery(cudaEvent_t event) { return query_position(event_position_of, event); }

extern "C" cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    State &s = S();
    std::lock_guard<std::mutex> g(s.mu);
    if (s.sticky != cudaSuccess) return fail(s.sticky);
    if (!ms) return fail(cudaErrorInvalidValue);
    if (!start || !end || !s.events.count(start) || !s.events.count(end)) return fail(cudaErrorInvalidResourceHandle);
    if ((start->flags | end->flags) & cudaEventDisableTiming) return fail(cudaErrorInvalidResourceHandle);
    if (!start->time || !end->time) return fail(cudaErrorInvalidResourceHandle);
    if (!start->time->done || !end->time->done) return fail(cudaErrorNotReady);
    *ms = std::chrono::duration<float, std::milli>(end->time->at - start->time->at).count();
    return cudaSuccess;
}

// tbert's emulated CUDA device, execution half: launch checks, the grid runner, fibers, barriers, warp
// collectives, shared memory and the schedule orders (TBERT_EMU_ORDER). See emu_device.h for what kernels see and
// docs/cuda.md ("Emulated device") for what it checks.
//
// How a grid runs. The blocks run one after another (in TBERT_EMU_ORDER's block order). In a block every CUDA
// thread is a fiber, and the block is run in rounds: a round runs each ready thread, in the order's sequence,
// until it reaches a sync point (barrier or warp collective) or exits. The arrival that completes a barrier or a
// collective computes its results; a barrier's threads are ready for the next round, a collective's lanes run at
// once, before the rest of the round (random order: half the time), so that one warp runs ahead of the others. A thread that exits hands its
// fiber straight to the next not-yet-started thread of the round, so a barrier-free kernel runs as a plain loop
// on one fiber with no switch per thread. When no thread is ready and some have not exited, the block is stuck:
// that is a misuse (a thread skipped a barrier, a lane named in a mask never came, two barrier call sites), and
// the block is diagnosed and the kernel aborted with tbert_emu_fault.
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>
#include <vector>

#include "emu_device.h"

#if defined(__SANITIZE_ADDRESS__) || defined(TBERT_EMU_ASAN_RUNTIME)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define TBERT_EMU_ASAN 1
#else
#define TBERT_EMU_ASAN 0
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace tbert_emu {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// Context switch. x86-64: a hand-written switch of the callee-saved registers (glibc's swapcontext makes a
// sigprocmask system call per switch); MXCSR and the x87 control word are left alone: kernel code never changes
// the floating-point environment. Elsewhere: ucontext (slower, same semantics).
#if defined(__x86_64__)
extern "C" void tbert_emu_ctx_switch(void **save_sp, void *to_sp) __attribute__((visibility("hidden")));
extern "C" void tbert_emu_ctx_trampoline() __attribute__((visibility("hidden")));
asm(R"(
    .text
    .p2align 4
    .globl tbert_emu_ctx_switch
    .hidden tbert_emu_ctx_switch
    .type tbert_emu_ctx_switch, @function
tbert_emu_ctx_switch:
    .cfi_startproc
    endbr64
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size tbert_emu_ctx_switch, .-tbert_emu_ctx_switch

    .p2align 4
    .globl tbert_emu_ctx_trampoline
    .hidden tbert_emu_ctx_trampoline
    .type tbert_emu_ctx_trampoline, @function
tbert_emu_ctx_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    endbr64
    movq %r12, %rdi
    callq *%r13
    ud2
    .cfi_endproc
    .size tbert_emu_ctx_trampoline, .-tbert_emu_ctx_trampoline
)");
#endif

struct sched;
struct thread_rec;

struct fiber {
    void *sp = nullptr;       // saved stack pointer while switched out (x86-64)
    char *region = nullptr;   // the kStackSize-aligned region (guard page at its bottom)
    char *map = nullptr;      // what mmap returned (to unmap)
    size_t map_len = 0;
    fiber_top *top = nullptr; // at the top of region
    sched *s = nullptr;
    thread_rec *assigned = nullptr; // the thread it runs or that waits on it; nullptr: free
    void *asan_fake = nullptr;
#if !defined(__x86_64__)
    ucontext_t uc;
#endif
};

enum class tstate : uint8_t { unstarted, ready, running, barrier, warp, done };

struct thread_rec : thread_view {
    int linear = 0;
    int pos = 0; // position in the block's base order
    tstate st = tstate::unstarted;
    fiber *f = nullptr;
    // the sync point it waits at
    const char *file = nullptr;
    int line = 0;
    sync_kind kind = SYNC_THREADS;
    const char *form = nullptr; // the barrier's name
    unsigned mask = 0;
    uint64_t value = 0, result = 0;
    int arg = 0, width = 32, is_signed = 0;
};

struct warp_group { // a collective some lanes of a warp wait at
    sync_kind kind;
    const char *file;
    int line;
    unsigned mask;
    unsigned arrived;
};

enum class order_kind { forward, reverse, random };

struct shared_block {
    const char *file;
    int line;
    size_t bytes;
    void *p;
};

void name_of(const grid_job *job, char *buf, size_t n) {
    const char *nm = job->name;
    size_t len = strlen(nm);
    if (len >= 2 && nm[0] == '(' && nm[len - 1] == ')') nm++, len -= 2; // TBERT_LAUNCH((k<T, N>), ...)
    snprintf(buf, n, "%.*s", (int)len, nm);
}

bool same_site(const char *f1, int l1, const char *f2, int l2) {
    return l1 == l2 && (f1 == f2 || (f1 && f2 && strcmp(f1, f2) == 0));
}

const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

const char *kind_name(sync_kind k) {
    switch (k) {
    case SYNC_THREADS: return "__syncthreads";
    case SYNC_WARP: return "__syncwarp";
    case SHFL_IDX: return "__shfl_sync";
    case SHFL_UP: return "__shfl_up_sync";
    case SHFL_DOWN: return "__shfl_down_sync";
    case SHFL_XOR: return "__shfl_xor_sync";
    case VOTE_BALLOT: return "__ballot_sync";
    case VOTE_ANY: return "__any_sync";
    case VOTE_ALL: return "__all_sync";
    case REDUCE_ADD: return "__reduce_add_sync";
    case REDUCE_MIN: return "__reduce_min_sync";
    case REDUCE_MAX: return "__reduce_max_sync";
    default: return "?";
    }
}

uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t hash_str(const char *s, uint64_t h) {
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

// TBERT_EMU_ORDER=forward|reverse|random:SEED (read at each grid run: getenv is not mutable state of ours).
struct order_spec {
    order_kind kind = order_kind::forward;
    uint64_t seed = 0;
    bool ok = true;
};
order_spec read_order() {
    order_spec o;
    const char *e = getenv("TBERT_EMU_ORDER");
    if (!e || !*e || strcmp(e, "forward") == 0) return o;
    if (strcmp(e, "reverse") == 0) {
        o.kind = order_kind::reverse;
        return o;
    }
    if (strncmp(e, "random:", 7) == 0 && e[7]) {
        char *end = nullptr;
        errno = 0;
        const unsigned long long v = strtoull(e + 7, &end, 10);
        if (errno == 0 && end && *end == '\0') {
            o.kind = order_kind::random;
            o.seed = v;
            return o;
        }
    }
    o.ok = false;
    return o;
}

// ---------------------------------------------------------------------------------------------------------------
// Fiber stacks: kStackSize-aligned regions (emu_device.h finds fiber_top from the stack pointer) with a
// PROT_NONE guard page at the bottom. Kept in a process-wide pool between grids (mmap per launch is measurable);
// the pool is the emulated device's own state, behind a mutex.
struct stack_pool {
    std::mutex mu;
    std::vector<fiber *> free;
};
stack_pool &pool() {
    static stack_pool *p = new stack_pool; // never destroyed: fibers may be taken while exit handlers run
    return *p;
}

fiber *new_fiber() {
    const size_t len = 2 * kStackSize;
    void *m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    char *map = static_cast<char *>(m);
    char *region = reinterpret_cast<char *>(((uintptr_t)map + kStackSize - 1) & ~(uintptr_t)(kStackSize - 1));
    if (mprotect(region, (size_t)sysconf(_SC_PAGESIZE), PROT_NONE) != 0) {
        munmap(map, len);
        return nullptr;
    }
    fiber *f = new (std::nothrow) fiber;
    if (!f) {
        munmap(map, len);
        return nullptr;
    }
    f->map = map;
    f->map_len = len;
    f->region = region;
    f->top = fiber_top_of((uintptr_t)region);
    f->top->thread = nullptr;
    f->top->owner = f;
    return f;
}

fiber *take_fiber() {
    {
        stack_pool &p = pool();
        std::lock_guard<std::mutex> lock(p.mu);
        if (!p.free.empty()) {
            fiber *f = p.free.back();
            p.free.pop_back();
            return f;
        }
    }
    return new_fiber();
}

// A fiber goes back to the pool suspended at its loop's switch, or abandoned in the middle of a kernel after a
// fault: either way it is restarted from its entry the next time, and ASan forgets the abandoned frames.
void give_back(fiber *f) {
    f->sp = nullptr;
    f->assigned = nullptr;
    f->s = nullptr;
    f->asan_fake = nullptr;
#if TBERT_EMU_ASAN
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    __asan_unpoison_memory_region(f->region + page, kStackSize - page);
#endif
    stack_pool &p = pool();
    std::lock_guard<std::mutex> lock(p.mu);
    if (p.free.size() < 2 * kMaxThreadsPerBlock) {
        p.free.push_back(f);
        return;
    }
    munmap(f->map, f->map_len);
    delete f;
}

void fiber_main(void *arg);

// ---------------------------------------------------------------------------------------------------------------
// One grid run.
struct sched {
    const grid_job *job = nullptr;
    order_spec order;
    block_view blk{};
    unsigned nthreads = 0, nwarps = 0;
    std::vector<thread_rec> th;
    std::vector<int> base_order;      // thread linear ids in the order's sequence
    std::vector<int> ready;           // this round's threads (linear ids), in order
    size_t cursor = 0;                // next index into ready
    std::vector<char> released;       // by position: ready for the next round
    std::vector<int> released_random; // random order: released threads, shuffled per round
    std::vector<int> ahead;           // threads released by a warp collective that run before the rest of the
                                      // round (a stack: back first), so that a warp runs ahead of the others
    unsigned ndone = 0;
    uint64_t rng = 0;
    // barrier
    unsigned at_barrier = 0, barrier_pred = 0;
    const char *barrier_file = nullptr;
    int barrier_line = 0;
    const char *barrier_form = nullptr;
    // warp collectives: pending groups per warp
    std::vector<std::vector<warp_group>> groups;
    // shared memory of the block
    std::vector<shared_block> statics;
    void *dyn = nullptr;
    bool dyn_made = false;
    // fibers
    std::vector<fiber *> fibers; // all fibers taken for this grid
    std::vector<fiber *> idle;   // free ones
    void *host_sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t host_uc;
#endif
    bool host_known = false;
    const void *host_stack_lo = nullptr;
    size_t host_stack_size = 0;
    void *host_fake = nullptr;
    uint64_t switches = 0; // host -> fiber switches (TBERT_EMU_PROFILE)
    // fault
    bool faulted = false;
    cudaError_t fault_code = cudaSuccess;
    std::string fault_msg;

    void fault(cudaError_t code, const thread_rec *t, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
    std::string where(const thread_rec *t) const;
    std::string describe_wait(const thread_rec &t) const;
    void release(thread_rec &t);
    thread_rec *take_unstarted();
    fiber *next_fiber();
    void switch_to(fiber *f);
    void leave(fiber *from);
    void block_on(thread_rec &t);
    bool run_block(uint3 bidx, uint64_t block_linear);
    void diagnose();
    void free_shared();
};

std::string sched::where(const thread_rec *t) const {
    char buf[512];
    char nm[128];
    name_of(job, nm, sizeof nm);
    int n = snprintf(buf, sizeof buf, "kernel %s (%s:%d) block (%u,%u,%u)", nm, base_name(job->file), job->line,
                     blk.block_idx.x, blk.block_idx.y, blk.block_idx.z);
    if (t && n > 0 && (size_t)n < sizeof buf)
        snprintf(buf + n, sizeof buf - (size_t)n, " thread (%u,%u,%u)", t->thread_idx.x, t->thread_idx.y,
                 t->thread_idx.z);
    return buf;
}

void sched::fault(cudaError_t code, const thread_rec *t, const char *fmt, ...) {
    if (faulted) return;
    faulted = true;
    fault_code = code;
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fault_msg = where(t) + ": " + msg;
}

std::string sched::describe_wait(const thread_rec &t) const {
    char buf[256];
    if (t.st == tstate::barrier)
        snprintf(buf, sizeof buf, "waits at %s (%s:%d)", t.form, base_name(t.file), t.line);
    else if (t.st == tstate::warp)
        snprintf(buf, sizeof buf, "waits at %s (%s:%d) with mask 0x%08x", kind_name(t.kind), base_name(t.file), t.line,
                 t.mask);
    else if (t.st == tstate::done)
        snprintf(buf, sizeof buf, "has exited");
    else
        snprintf(buf, sizeof buf, "has not reached it");
    return buf;
}

void sched::release(thread_rec &t) {
    t.st = tstate::ready;
    if (order.kind == order_kind::random)
        released_random.push_back(t.linear);
    else
        released[(size_t)t.pos] = 1;
}

// The next thread of this round when it has not started (a finished fiber runs it without a switch).
thread_rec *sched::take_unstarted() {
    if (faulted || !ahead.empty() || cursor >= ready.size()) return nullptr;
    thread_rec &t = th[(size_t)ready[cursor]];
    if (t.st != tstate::unstarted) return nullptr;
    cursor++;
    return &t;
}

// What runs next in this round: the fiber of the next ready thread (an idle or new fiber for a thread that has
// not started), or nullptr at the end of the round or after a fault (then the host takes over).
fiber *sched::next_fiber() {
    if (faulted) return nullptr;
    if (!ahead.empty()) {
        const int id = ahead.back();
        ahead.pop_back();
        return th[(size_t)id].f;
    }
    if (cursor >= ready.size()) return nullptr;
    thread_rec &t = th[(size_t)ready[cursor++]];
    if (t.st != tstate::unstarted) return t.f;
    fiber *f;
    if (idle.empty()) {
        f = take_fiber();
        if (!f) {
            fault(cudaErrorLaunchOutOfResources, &t, "cannot map a fiber stack: %s", strerror(errno));
            return nullptr;
        }
        fibers.push_back(f);
    } else {
        f = idle.back();
        idle.pop_back();
    }
    f->s = this;
    f->assigned = &t;
    return f;
}

#if TBERT_EMU_ASAN
#define ASAN_START_SWITCH(save, bottom, size) __sanitizer_start_switch_fiber((save), (bottom), (size))
#define ASAN_FINISH_SWITCH(save, bottom, size) __sanitizer_finish_switch_fiber((save), (bottom), (size))
#else
#define ASAN_START_SWITCH(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#define ASAN_FINISH_SWITCH(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#endif

// A fiber that has not run yet (or was given back) starts at fiber_main.
void prepare(fiber *f) {
    if (f->sp) return;
#if defined(__x86_64__)
    // tbert_emu_ctx_switch pops r15, r14, r13, r12, rbx, rbp and returns into the trampoline, which calls r13(r12)
    // with rsp = f->top: 16-aligned (64-byte steps below the region's top), as a call needs.
    uint64_t *sp = reinterpret_cast<uint64_t *>(reinterpret_cast<char *>(f->top) - 56);
    sp[0] = 0;                                   // r15
    sp[1] = 0;                                   // r14
    sp[2] = (uint64_t)(uintptr_t)&fiber_main;    // r13: entry
    sp[3] = (uint64_t)(uintptr_t)f;              // r12: argument
    sp[4] = 0;                                   // rbx
    sp[5] = 0;                                   // rbp: ends frame-pointer unwinding (ASan's reports)
    sp[6] = (uint64_t)(uintptr_t)&tbert_emu_ctx_trampoline;
    f->sp = sp;
#else
    getcontext(&f->uc);
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    f->uc.uc_stack.ss_sp = f->region + page;
    f->uc.uc_stack.ss_size = (size_t)((char *)f->top - f->region) - page - 64;
    f->uc.uc_link = nullptr;
    makecontext(&f->uc, (void (*)())fiber_main, 1, f);
    f->sp = f;
#endif
}

// Host -> fiber f; returns when a fiber hands control back to the host (end of a round, or a fault).
void sched::switch_to(fiber *f) {
    switches++;
    prepare(f);
    ASAN_START_SWITCH(&host_fake, f->region, (size_t)((char *)f->top - f->region));
#if defined(__x86_64__)
    tbert_emu_ctx_switch(&host_sp, f->sp);
#else
    swapcontext(&host_uc, &f->uc);
#endif
    ASAN_FINISH_SWITCH(host_fake, nullptr, nullptr);
}

// Fiber `from` hands over to the next ready fiber of the round, or to the host when there is none. Returns when
// `from` is resumed.
void sched::leave(fiber *from) {
    fiber *to = next_fiber();
    if (to == from) return; // the next thread to run is on this very fiber
    if (to) {
        switches++;
        prepare(to);
        ASAN_START_SWITCH(&from->asan_fake, to->region, (size_t)((char *)to->top - to->region));
#if defined(__x86_64__)
        tbert_emu_ctx_switch(&from->sp, to->sp);
#else
        swapcontext(&from->uc, &to->uc);
#endif
    } else {
        ASAN_START_SWITCH(&from->asan_fake, host_stack_lo, host_stack_size);
#if defined(__x86_64__)
        tbert_emu_ctx_switch(&from->sp, host_sp);
#else
        swapcontext(&from->uc, &host_uc);
#endif
    }
    ASAN_FINISH_SWITCH(from->asan_fake, nullptr, nullptr);
}

void fiber_main(void *arg) {
    fiber *f = static_cast<fiber *>(arg);
    {
        sched *s = f->s;
        const void *lo = nullptr;
        size_t size = 0;
        ASAN_FINISH_SWITCH(nullptr, &lo, &size);
        if (!s->host_known) { // the first fiber of a grid is entered from the host
            s->host_stack_lo = lo;
            s->host_stack_size = size;
            s->host_known = true;
        }
    }
    for (;;) {
        sched *s = f->s;
        thread_rec *t = f->assigned;
        while (t) {
            t->f = f;
            t->st = tstate::running;
            f->top->thread = t;
            s->job->body(const_cast<grid_job *>(s->job));
            t->st = tstate::done;
            t->f = nullptr;
            s->ndone++;
            t = s->take_unstarted();
            f->assigned = t;
        }
        f->top->thread = nullptr;
        s->idle.push_back(f);
        s->leave(f);
    }
}

// The running thread t waits at the sync point recorded in it: run others until it is released and picked.
void sched::block_on(thread_rec &t) {
    fiber *f = t.f;
    leave(f);
    t.st = tstate::running;
    f->top->thread = &t;
}

thread_rec &current() {
    fiber_top *top = self();
    return *static_cast<thread_rec *>(top->thread);
}

// Diagnosis of a stuck block: no thread ready, some not exited.
void sched::diagnose() {
    if (at_barrier > 0) {
        const thread_rec *waiter = nullptr;
        for (const thread_rec &t : th)
            if (t.st == tstate::barrier) {
                waiter = &t;
                break;
            }
        for (const thread_rec &t : th)
            if (t.st != tstate::barrier) {
                const std::string w = describe_wait(t);
                fault(cudaErrorIllegalInstruction, waiter,
                      "%s (%s:%d): %u of %u threads wait, but thread (%u,%u,%u) %s", barrier_form,
                      base_name(barrier_file), barrier_line, at_barrier, nthreads, t.thread_idx.x, t.thread_idx.y,
                      t.thread_idx.z, w.c_str());
                return;
            }
    }
    for (unsigned w = 0; w < nwarps; w++)
        for (const warp_group &g : groups[w]) {
            for (int lane = 0; lane < 32; lane++) {
                if (!(g.mask >> lane & 1u) || (g.arrived >> lane & 1u)) continue;
                const thread_rec &t = th[(size_t)w * 32 + (size_t)lane];
                const thread_rec *waiter = nullptr;
                for (int l2 = 0; l2 < 32 && !waiter; l2++)
                    if (g.arrived >> l2 & 1u) waiter = &th[(size_t)w * 32 + (size_t)l2];
                const std::string d = describe_wait(t);
                fault(cudaErrorIllegalInstruction, waiter,
                      "%s (%s:%d) with mask 0x%08x: lane %d (thread (%u,%u,%u)) named in the mask %s", kind_name(g.kind),
                      base_name(g.file), g.line, g.mask, lane, t.thread_idx.x, t.thread_idx.y, t.thread_idx.z,
                      d.c_str());
                return;
            }
        }
    fault(cudaErrorIllegalInstruction, nullptr, "the block is stuck (emulator bug?)");
}

void sched::free_shared() {
    for (shared_block &b : statics) free(b.p);
    statics.clear();
    free(dyn);
    dyn = nullptr;
    dyn_made = false;
}

bool sched::run_block(uint3 bidx, uint64_t block_linear) {
    blk.block_idx = bidx;
    for (thread_rec &t : th) { // (indices were set once per grid)
        t.st = tstate::unstarted;
        t.f = nullptr;
    }
    for (unsigned w = 0; w < nwarps; w++) groups[w].clear();
    ahead.clear();
    at_barrier = 0;
    ndone = 0;
    uint64_t round_seed = hash_str(job->name, order.seed ^ 0xcbf29ce484222325ull) ^ (block_linear * 0x9e3779b97f4a7c15ull);
    ready = base_order;
    if (order.kind == order_kind::random) { // (forward and reverse: positions set once per grid)
        rng = round_seed;
        for (size_t i = ready.size(); i > 1; i--) std::swap(ready[i - 1], ready[splitmix64(&rng) % i]);
        for (unsigned i = 0; i < nthreads; i++) th[(size_t)ready[i]].pos = (int)i;
    }
    cursor = 0;
    for (;;) {
        if (fiber *f = next_fiber()) switch_to(f); // runs the round; fibers hand over among themselves
        if (faulted) break;
        if (ndone == nthreads) break;
        ready.clear();
        if (order.kind == order_kind::random) {
            for (size_t i = released_random.size(); i > 1; i--)
                std::swap(released_random[i - 1], released_random[splitmix64(&rng) % i]);
            ready.swap(released_random);
        } else {
            for (unsigned p = 0; p < nthreads; p++)
                if (released[p]) {
                    released[p] = 0;
                    ready.push_back(base_order[p]);
                }
        }
        cursor = 0;
        if (ready.empty()) {
            diagnose();
            break;
        }
    }
    free_shared();
    return !faulted;
}

// ---------------------------------------------------------------------------------------------------------------
// TBERT_EMU_PROFILE=1: per kernel, launches, blocks, CUDA threads, fiber switches and seconds, printed to stderr at
// exit (the cost of emulation, to choose test shapes and find what to speed up).
struct profile_entry {
    std::string name;
    uint64_t launches, blocks, threads, switches;
    double seconds;
};
struct profile_table {
    std::mutex mu;
    std::vector<profile_entry> rows;
};
profile_table &profile() {
    static profile_table *t = new profile_table;
    return *t;
}
void print_profile() {
    profile_table &t = profile();
    std::lock_guard<std::mutex> lock(t.mu);
    double total = 0;
    for (const profile_entry &e : t.rows) total += e.seconds;
    fprintf(stderr, "tbert-emu profile: %-44s %8s %10s %12s %10s %9s\n", "kernel", "launches", "blocks", "threads",
            "switches", "seconds");
    for (const profile_entry &e : t.rows)
        fprintf(stderr, "tbert-emu profile: %-44s %8" PRIu64 " %10" PRIu64 " %12" PRIu64 " %10" PRIu64 " %9.3f\n",
                e.name.c_str(), e.launches, e.blocks, e.threads, e.switches, e.seconds);
    fprintf(stderr, "tbert-emu profile: total %.3f s in kernels\n", total);
}
bool profiling() {
    const char *e = getenv("TBERT_EMU_PROFILE");
    return e && strcmp(e, "1") == 0;
}
void add_profile(const char *name, uint64_t blocks, uint64_t threads, uint64_t switches, double seconds) {
    profile_table &t = profile();
    std::lock_guard<std::mutex> lock(t.mu);
    if (t.rows.empty()) atexit(print_profile);
    for (profile_entry &e : t.rows)
        if (e.name == name) {
            e.launches++, e.blocks += blocks, e.threads += threads, e.switches += switches, e.seconds += seconds;
            return;
        }
    t.rows.push_back(profile_entry{name, 1, blocks, threads, switches, seconds});
}

void run_grid(void *ctx) {
    grid_job *job = static_cast<grid_job *>(ctx);
    const bool prof = profiling();
    timespec t0{};
    if (prof) clock_gettime(CLOCK_MONOTONIC, &t0);
    sched s;
    s.job = job;
    s.order = read_order();
    if (!s.order.ok) {
        tbert_emu_fault(cudaErrorInvalidValue, "TBERT_EMU_ORDER=%s: expected forward, reverse or random:SEED",
                        getenv("TBERT_EMU_ORDER"));
        return;
    }
    s.blk.block_dim = job->block;
    s.blk.grid_dim = job->grid;
    s.nthreads = job->block.x * job->block.y * job->block.z;
    s.nwarps = (s.nthreads + 31) / 32;
    s.th.resize(s.nthreads);
    s.groups.resize(s.nwarps);
    s.released.assign(s.nthreads, 0);
    s.base_order.resize(s.nthreads);
    const dim3 bd = job->block;
    for (unsigned i = 0; i < s.nthreads; i++) {
        s.base_order[i] = (int)(s.order.kind == order_kind::reverse ? s.nthreads - 1 - i : i);
        thread_rec &t = s.th[i];
        t.block = &s.blk;
        t.linear = (int)i;
        t.thread_idx = uint3{i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
    }
    for (unsigned i = 0; i < s.nthreads; i++) s.th[(size_t)s.base_order[i]].pos = (int)i;
    const uint64_t gx = job->grid.x, gy = job->grid.y, gz = job->grid.z, nblocks = gx * gy * gz;
    // block order: forward, reverse, or i -> (a * i + c) mod nblocks with gcd(a, nblocks) = 1 (a permutation)
    uint64_t a = 1, c = 0;
    if (s.order.kind == order_kind::random && nblocks > 1) {
        uint64_t st = hash_str(job->name, s.order.seed);
        for (;;) {
            a = splitmix64(&st) % nblocks;
            uint64_t x = a, y = nblocks;
            while (y) {
                const uint64_t r = x % y;
                x = y;
                y = r;
            }
            if (a > 0 && x == 1) break;
        }
        c = splitmix64(&st) % nblocks;
    }
    for (uint64_t i = 0; i < nblocks && !s.faulted; i++) {
        uint64_t b = i;
        if (s.order.kind == order_kind::reverse) b = nblocks - 1 - i;
        else if (s.order.kind == order_kind::random) b = (uint64_t)(((unsigned __int128)a * i + c) % nblocks);
        const uint3 bidx{(unsigned)(b % gx), (unsigned)((b / gx) % gy), (unsigned)(b / (gx * gy))};
        s.run_block(bidx, b);
    }
    for (fiber *f : s.fibers) give_back(f);
    if (prof) {
        timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        char nm[128];
        name_of(job, nm, sizeof nm);
        add_profile(nm, nblocks, nblocks * s.nthreads, s.switches,
                    (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    }
    if (s.faulted) tbert_emu_fault(s.fault_code, "%s", s.fault_msg.c_str());
}

void drop_grid(void *ctx) {
    grid_job *job = static_cast<grid_job *>(ctx);
    job->destroy(job);
}

// ---------------------------------------------------------------------------------------------------------------
// Kernel attributes (cudaFuncSetAttribute): per kernel function, process-wide like the CUDA context's.
struct attr_table {
    std::mutex mu;
    std::vector<std::pair<const void *, int>> max_dyn_smem;
};
attr_table &attrs() {
    static attr_table *t = new attr_table;
    return *t;
}

size_t max_dynamic_shared(const void *fn) {
    attr_table &t = attrs();
    std::lock_guard<std::mutex> lock(t.mu);
    for (const auto &e : t.max_dyn_smem)
        if (e.first == fn) return (size_t)e.second;
    return kDefaultDynamicShared;
}

} // namespace

// ---------------------------------------------------------------------------------------------------------------
// Entry points used by emu_device.h.

namespace {

// After a fault inside kernel code: back to the host for good (the host abandons the kernel).
[[noreturn]] void die(thread_rec &t) {
    t.f->s->leave(t.f); // faulted: to the host, which abandons the kernel
    abort();            // never resumed
}

} // namespace

cudaError_t func_set_attribute(const void *fn, int attr, int value) {
    if (!fn) return cudaErrorInvalidValue;
    if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) return value >= -1 && value <= 100 ? cudaSuccess : cudaErrorInvalidValue;
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
    if (value < 0 || (size_t)value > kMaxDynamicSharedOptIn) return cudaErrorInvalidValue;
    attr_table &t = attrs();
    std::lock_guard<std::mutex> lock(t.mu);
    for (auto &e : t.max_dyn_smem)
        if (e.first == fn) {
            e.second = value;
            return cudaSuccess;
        }
    t.max_dyn_smem.emplace_back(fn, value);
    return cudaSuccess;
}

cudaError_t check_launch(const void *fn, dim3 grid, dim3 block, size_t smem) {
    cudaError_t e = cudaSuccess;
    const uint64_t threads = (uint64_t)block.x * block.y * block.z;
    if (!block.x || !block.y || !block.z || !grid.x || !grid.y || !grid.z)
        e = cudaErrorInvalidConfiguration;
    else if (block.x > kMaxBlockDim[0] || block.y > kMaxBlockDim[1] || block.z > kMaxBlockDim[2] ||
             threads > kMaxThreadsPerBlock)
        e = cudaErrorInvalidConfiguration;
    else if (grid.x > kMaxGridDim[0] || grid.y > kMaxGridDim[1] || grid.z > kMaxGridDim[2])
        e = cudaErrorInvalidConfiguration;
    else if (smem > max_dynamic_shared(fn))
        e = cudaErrorInvalidValue;
    if (e != cudaSuccess) tbert_emu_set_launch_error(e);
    return e;
}

void enqueue_grid(cudaStream_t stream, grid_job *job) {
    char nm[128];
    name_of(job, nm, sizeof nm);
    snprintf(job->what, sizeof job->what, "kernel %s (%s:%d)", nm, base_name(job->file), job->line);
    // a refused enqueue (destroyed stream, sticky fault) has already dropped the job
    const cudaError_t e = tbert_emu_enqueue(stream, run_grid, job, drop_grid, job->what);
    if (e != cudaSuccess) tbert_emu_set_launch_error(e);
}

int block_barrier(int pred, const char *form, const char *file, int line) {
    thread_rec &t = current();
    sched &s = *t.f->s;
    if (s.at_barrier == 0) {
        s.barrier_file = file;
        s.barrier_line = line;
        s.barrier_form = form;
        s.barrier_pred = 0;
    } else if (!same_site(file, line, s.barrier_file, s.barrier_line)) {
        s.fault(cudaErrorIllegalInstruction, &t, "%s (%s:%d) while %u threads wait at %s (%s:%d): two barrier call sites",
                form, base_name(file), line, s.at_barrier, s.barrier_form, base_name(s.barrier_file), s.barrier_line);
        die(t);
    }
    t.st = tstate::barrier;
    t.file = file;
    t.line = line;
    t.form = form;
    t.kind = SYNC_THREADS;
    s.barrier_pred += pred ? 1u : 0u;
    if (++s.at_barrier == s.nthreads) {
        for (thread_rec &u : s.th) {
            u.result = s.barrier_pred;
            s.release(u);
        }
        s.at_barrier = 0;
    }
    s.block_on(t);
    return (int)t.result;
}

uint64_t warp_collective(sync_kind kind, unsigned mask, uint64_t value, int arg, int width, int is_signed,
                         const char *file, int line) {
    thread_rec &t = current();
    sched &s = *t.f->s;
    const unsigned lane = (unsigned)t.linear & 31u, w = (unsigned)t.linear >> 5;
    const unsigned nlanes = s.nthreads - w * 32 < 32 ? s.nthreads - w * 32 : 32;
    const unsigned exist = nlanes == 32 ? 0xffffffffu : (1u << nlanes) - 1u;
    if (!(mask >> lane & 1u)) {
        s.fault(cudaErrorIllegalInstruction, &t, "%s (%s:%d) with mask 0x%08x, which does not name the calling lane %u",
                kind_name(kind), base_name(file), line, mask, lane);
        die(t);
    }
    if (mask & ~exist) {
        s.fault(cudaErrorIllegalInstruction, &t,
                "%s (%s:%d) with mask 0x%08x names lanes that do not exist (warp %u of a %u-thread block has %u lanes)",
                kind_name(kind), base_name(file), line, mask, w, s.nthreads, nlanes);
        die(t);
    }
    if (kind >= SHFL_IDX && kind <= SHFL_XOR && (width < 1 || width > 32 || (width & (width - 1)))) {
        s.fault(cudaErrorIllegalInstruction, &t, "%s (%s:%d) with width %d (a power of 2 up to 32 is needed)",
                kind_name(kind), base_name(file), line, width);
        die(t);
    }
    t.st = tstate::warp;
    t.kind = kind;
    t.file = file;
    t.line = line;
    t.mask = mask;
    t.value = value;
    t.arg = arg;
    t.width = width;
    t.is_signed = is_signed;
    std::vector<warp_group> &gs = s.groups[w];
    size_t gi = 0;
    while (gi < gs.size() && !(gs[gi].kind == kind && gs[gi].mask == mask && same_site(gs[gi].file, gs[gi].line, file, line)))
        gi++;
    if (gi == gs.size()) gs.push_back(warp_group{kind, file, line, mask, 0});
    gs[gi].arrived |= 1u << lane;
    if (gs[gi].arrived == mask) { // complete: every lane of the mask is here
        thread_rec *lanes = &s.th[(size_t)w * 32];
        uint64_t acc = 0;
        if (kind == REDUCE_MIN) acc = is_signed ? 0x7fffffffu : 0xffffffffu;
        if (kind == REDUCE_MAX) acc = is_signed ? 0x80000000u : 0u;
        if (kind == VOTE_ALL) acc = 1;
        for (unsigned l = 0; l < 32; l++) {
            if (!(mask >> l & 1u)) continue;
            const uint64_t v = lanes[l].value;
            const uint32_t v32 = (uint32_t)v;
            switch (kind) {
            case VOTE_BALLOT: acc |= (uint64_t)(v != 0) << l; break;
            case VOTE_ANY: acc |= v != 0; break;
            case VOTE_ALL: acc &= v != 0; break;
            case REDUCE_ADD: acc = (uint32_t)(acc + v32); break;
            case REDUCE_MIN:
                if (is_signed ? (int32_t)v32 < (int32_t)(uint32_t)acc : v32 < (uint32_t)acc) acc = v32;
                break;
            case REDUCE_MAX:
                if (is_signed ? (int32_t)v32 > (int32_t)(uint32_t)acc : v32 > (uint32_t)acc) acc = v32;
                break;
            default: break;
            }
        }
        // The lanes go on at once, ahead of the rest of the round (forward and reverse; random: half the time), so
        // a warp runs ahead of the others up to its next barrier: a race between warps across warp collectives
        // (a reduction's scratch reused without a barrier) shows as an order dependence.
        const bool run_ahead = s.order.kind != order_kind::random || (splitmix64(&s.rng) & 1u);
        int go[32], ngo = 0;
        for (unsigned l = 0; l < 32; l++) {
            if (!(mask >> l & 1u)) continue;
            thread_rec &u = lanes[l];
            if (kind >= SHFL_IDX && kind <= SHFL_XOR) {
                // PTX shfl.sync: b[4:0], segment mask from the width, clamp for idx/down/bfly
                const int wd = u.width, b = u.arg & 31, L = (int)l;
                const int base = L & ~(wd - 1), max_lane = base + wd - 1;
                int j = L;
                bool ok = true;
                if (kind == SHFL_IDX) j = base | (b & (wd - 1));
                else if (kind == SHFL_UP) j = L - b, ok = j >= base;
                else if (kind == SHFL_DOWN) j = L + b, ok = j <= max_lane;
                else j = L ^ b, ok = j <= max_lane;
                if (!ok) j = L;
                // a source lane outside the mask: undefined in CUDA, poison here
                u.result = (mask >> j & 1u) ? lanes[j].value : ~(uint64_t)0;
            } else {
                u.result = acc;
            }
            if (run_ahead) {
                u.st = tstate::ready;
                go[ngo++] = u.linear;
            } else {
                s.release(u);
            }
        }
        if (ngo) { // onto the stack so that the lane first in the order's sequence runs first
            std::sort(go, go + ngo, [&s](int a, int b) { return s.th[(size_t)a].pos > s.th[(size_t)b].pos; });
            s.ahead.insert(s.ahead.end(), go, go + ngo);
        }
        gs.erase(gs.begin() + (ptrdiff_t)gi);
    }
    s.block_on(t);
    return t.result;
}

void *static_shared(const char *file, int line, size_t bytes) {
    thread_rec &t = current();
    sched &s = *t.f->s;
    for (const shared_block &b : s.statics)
        if (same_site(b.file, b.line, file, line)) {
            if (b.bytes != bytes) {
                s.fault(cudaErrorIllegalInstruction, &t, "shared array (%s:%d) declared with %zu and %zu bytes",
                        base_name(file), line, b.bytes, bytes);
                die(t);
            }
            return b.p;
        }
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        s.fault(cudaErrorLaunchOutOfResources, &t, "out of host memory for %zu bytes of shared memory", bytes);
        die(t);
    }
    memset(p, 0xff, bytes); // NaN floats: reads of unwritten shared memory show
    s.statics.push_back(shared_block{file, line, bytes, p});
    return p;
}

void *dynamic_shared() {
    thread_rec &t = current();
    sched &s = *t.f->s;
    if (!s.dyn_made) {
        const size_t n = s.job->smem;
        s.dyn = malloc(n); // exactly the launched size (0 too): ASan reports an access past it
        if (!s.dyn && n) {
            s.fault(cudaErrorLaunchOutOfResources, &t, "out of host memory for %zu bytes of shared memory", n);
            die(t);
        }
        if (n) memset(s.dyn, 0xff, n);
        s.dyn_made = true;
    }
    return s.dyn;
}

void device_trap(const char *what, const char *file, int line) {
    thread_rec &t = current();
    t.f->s->fault(cudaErrorAssert, &t, "%s (%s:%d)", what, base_name(file), line);
    die(t);
}

} // namespace tbert_emu

/* Items shared among a few threads started for one call (src/par_for.c): the fine-tuning stack's ops and the
 * serial remainder of a fine-tuning step (the optimiser, the gradients' zeroing, the batch's bf16 conversion).
 *
 * tbert_par_for(threads, n, fn, ctx) runs fn(ctx, item, worker) for every item < n. The items are cut into
 * min(threads, n) contiguous ranges, one per worker (worker w < threads: an index for per-worker scratch); worker 0
 * is the caller, the others are pthreads created for the call and joined before it returns (no pool, no spinning,
 * nothing global). threads <= 1 or n <= 1: every item on the caller's thread, in order. A range whose thread cannot
 * start runs on the caller afterwards. Which worker runs an item depends on the thread count, so callers keep their
 * results independent of it: items write disjoint outputs, and a sum is cut into fixed items whose partials are
 * added in item order after the call. Not a public header. */
#ifndef TBERT_PAR_FOR_H
#define TBERT_PAR_FOR_H

typedef void (*tbert_par_fn)(void *ctx, int item, int worker);

void tbert_par_for(int threads, int n, tbert_par_fn fn, void *ctx);

#endif

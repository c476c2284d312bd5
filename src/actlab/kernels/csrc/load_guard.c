/*
 * The load guard: multi-threaded kernel calls on a machine whose cores are taken by other processes.
 *
 * A parallel region ends at a barrier, so a call on two threads lasts until the slower thread is done. On
 * an idle machine both run at once. When another process keeps a core busy, the OS runs one of our
 * threads only part of the time: the other finishes the whole call (the blocks are handed out
 * dynamically) and then waits at the barrier for a thread that may not be scheduled for a whole time
 * slice, milliseconds against a call of tens of microseconds. That is how the sparse path fell to 0.45x of
 * dense on SmolLM2 with one core busy, while torch's dense matmuls lost far less.
 *
 * So every parallel call reports how long the calling thread waited at its end. A call that spent more
 * than half its time waiting, by more than ACTLAB_GUARD_MIN_WAIT_S, is a strike; ACTLAB_GUARD_STRIKES strikes
 * in a row (an unremarkable call takes one back) switch the kernels to one thread for the next
 * ACTLAB_GUARD_SERIAL_CALLS calls, after which they try two again. One thread cannot wait for another,
 * and on a machine with one core taken it still has a core of its own.
 *
 * State is process-wide and updated with relaxed atomics: concurrent callers may lose an update, which
 * only delays a switch by a call. ACTLAB_LOAD_GUARD=0 in the environment, or actlab_set_load_guard(0),
 * turns it off.
 */
#include "sparse_gemv_internal.h"

#include <stdlib.h>
#include <time.h>

#define ACTLAB_GUARD_MIN_WAIT_S 20e-6
#define ACTLAB_GUARD_STRIKES 3
/* ~20 decoded tokens of a 30-layer model at 4 calls per layer: long enough that probing costs little,
 * short enough to be back on two threads soon after the other process stops */
#define ACTLAB_GUARD_SERIAL_CALLS 2500

static int g_enabled = -1; /* -1: not read from the environment yet */
static int g_strikes = 0;
static int64_t g_serial_left = 0;
static int64_t g_switches = 0;

static int enabled(void) {
    int e = __atomic_load_n(&g_enabled, __ATOMIC_RELAXED);
    if (e < 0) {
        const char *env = getenv("ACTLAB_LOAD_GUARD");
        e = !(env != NULL && env[0] == '0' && env[1] == '\0');
        __atomic_store_n(&g_enabled, e, __ATOMIC_RELAXED);
    }
    return e;
}

double actlab__now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int actlab__guard_serial(void) {
    if (!enabled() || __atomic_load_n(&g_serial_left, __ATOMIC_RELAXED) <= 0) return 0;
    __atomic_fetch_sub(&g_serial_left, 1, __ATOMIC_RELAXED);
    return 1;
}

void actlab_guard_note(double waited_s, double total_s) {
    if (!enabled()) return;
    const int strike = waited_s > ACTLAB_GUARD_MIN_WAIT_S && waited_s > 0.5 * total_s;
    int s = __atomic_load_n(&g_strikes, __ATOMIC_RELAXED);
    s = strike ? s + 1 : (s > 0 ? s - 1 : 0);
    if (s >= ACTLAB_GUARD_STRIKES) {
        s = 0;
        __atomic_store_n(&g_serial_left, ACTLAB_GUARD_SERIAL_CALLS, __ATOMIC_RELAXED);
        __atomic_fetch_add(&g_switches, 1, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&g_strikes, s, __ATOMIC_RELAXED);
}

void actlab__guard_note(double waited_s, double total_s) { actlab_guard_note(waited_s, total_s); }

int actlab_set_load_guard(int on) {
    const int old = enabled();
    __atomic_store_n(&g_enabled, on ? 1 : 0, __ATOMIC_RELAXED);
    __atomic_store_n(&g_serial_left, 0, __ATOMIC_RELAXED); /* a fresh start either way */
    __atomic_store_n(&g_strikes, 0, __ATOMIC_RELAXED);
    return old;
}

void actlab_load_guard_state(int *on, int64_t *serial_left, int64_t *switches) {
    *on = enabled();
    *serial_left = __atomic_load_n(&g_serial_left, __ATOMIC_RELAXED);
    *switches = __atomic_load_n(&g_switches, __ATOMIC_RELAXED);
}

/* Atomic operations on shared memory for isostack (loaded with ctypes; see native.py).
 *
 * Python has no compare-and-swap on shared memory, so the few read-modify-write operations of the
 * shared-memory queues live here.  Plain ordered loads and stores stay in Python: on x86-64 an aligned
 * 8-byte store through a memoryview is one mov, and TSO keeps load->load, store->store and load->store
 * order.  Only store->load needs a fence, which iso_fence() and every locked RMW here provide.
 */
#include <stdint.h>
#include <string.h>

#include "isostack_abi.h"

int iso_cas64(uint64_t *p, uint64_t expected, uint64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

uint64_t iso_xchg64(uint64_t *p, uint64_t v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
uint64_t iso_fetch_add64(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
uint64_t iso_fetch_or64(uint64_t *p, uint64_t v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
uint64_t iso_load64(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
void iso_store64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
void iso_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* Vyukov bounded MPMC enqueue, used multi-producer/single-consumer: the one in isostack_abi.h, which the C
 * front-end (the preload shim) and the CPython fast path use too.  tail: the shared producer index; slots:
 * nslots (power of two) 64-byte slots whose first 8 bytes are the slot sequence number.  body: 48 bytes copied
 * to slot bytes 16..63; slot bytes 8..15 get the position, so the consumer can check the command sequence.
 * Returns the position, -1 when full, -2 when the queue is corrupt (a hostile peer scribbled over tail or
 * sequences and we gave up after a bounded spin).
 */
int64_t iso_mpsc_push(uint64_t *tail, unsigned char *slots, uint64_t nslots, const unsigned char *body)
{
    return iso_abi_push(tail, slots, nslots, body);
}

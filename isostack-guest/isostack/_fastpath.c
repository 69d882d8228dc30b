/* CPython extension: the front-end's per-message fast path and the atomics, without ctypes.
 *
 * Why: measured in a TCG guest, a ctypes call costs ~14 us and the Python send path ~120 us per 64-byte
 * message, against ~31 us for a kernel send(); one extension call that copies into the ring, publishes the
 * tail and checks the draining flag brings the per-message work down to one C call (see bench.py).
 * Word indices must match layout.py (checked at import by native.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>

#define C_TX_TAIL 8
#define C_RX_HEAD 16
#define C_DRAINING 32
#define C_TX_HEAD 40
#define C_RX_TAIL 41
#define C_STATE 48
#define ST_CONNECTED (1u << 2)
#define ST_ERROR (1u << 5)

static inline uint64_t *W(uintptr_t ctl, int w) { return (uint64_t *)(ctl + 8 * (uintptr_t)w); }

static int get_u64(PyObject *o, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

/* send(ctl, ring, size, tail, asym, data) -> 2*k + post, or -1 when the socket is not connected or failed.
 * Copies k = min(len(data), credits) bytes at tail, publishes tail + k (release), and says whether the
 * caller must post SEND: only when the draining flag was clear (xchg decides; with asym a plain load first).
 */
static PyObject *fp_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t ctl, ring, size, tail, asym;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "send(ctl, ring, size, tail, asym, data)");
        return NULL;
    }
    if (get_u64(args[0], &ctl) || get_u64(args[1], &ring) || get_u64(args[2], &size) || get_u64(args[3], &tail) ||
        get_u64(args[4], &asym))
        return NULL;
    uint64_t st = __atomic_load_n(W(ctl, C_STATE), __ATOMIC_ACQUIRE);
    if ((st & ST_ERROR) || !(st & ST_CONNECTED))
        return PyLong_FromLong(-1);
    Py_buffer view;
    if (PyObject_GetBuffer(args[5], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t head = __atomic_load_n(W(ctl, C_TX_HEAD), __ATOMIC_ACQUIRE);
    uint64_t used = tail - head;
    uint64_t free_ = used > size ? 0 : size - used;
    uint64_t k = (uint64_t)view.len < free_ ? (uint64_t)view.len : free_;
    int post = 0;
    if (k) {
        uint64_t off = tail & (size - 1);
        uint64_t first = size - off < k ? size - off : k;
        memcpy((char *)(uintptr_t)ring + off, view.buf, first);
        if (first < k)
            memcpy((char *)(uintptr_t)ring, (char *)view.buf + first, k - first);
        __atomic_store_n(W(ctl, C_TX_TAIL), tail + k, __ATOMIC_RELEASE);
        uint64_t *dr = W(ctl, C_DRAINING);
        if (!asym || !__atomic_load_n(dr, __ATOMIC_RELAXED))
            post = __atomic_exchange_n(dr, 1, __ATOMIC_SEQ_CST) == 0;
    }
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(2 * k + (uint64_t)post);
}

/* recv(ctl, ring, size, head, maxlen) -> bytes (may be empty: nothing buffered) */
static PyObject *fp_recv(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t ctl, ring, size, head, maxlen;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "recv(ctl, ring, size, head, maxlen)");
        return NULL;
    }
    if (get_u64(args[0], &ctl) || get_u64(args[1], &ring) || get_u64(args[2], &size) || get_u64(args[3], &head) ||
        get_u64(args[4], &maxlen))
        return NULL;
    uint64_t tail = __atomic_load_n(W(ctl, C_RX_TAIL), __ATOMIC_ACQUIRE);
    uint64_t avail = tail - head;
    if (avail > size)
        avail = 0; /* impossible unless the memory is corrupt: let the slow path report */
    uint64_t k = avail < maxlen ? avail : maxlen;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)k);
    if (!out || !k)
        return out;
    uint64_t off = head & (size - 1);
    uint64_t first = size - off < k ? size - off : k;
    char *dst = PyBytes_AS_STRING(out);
    memcpy(dst, (char *)(uintptr_t)ring + off, first);
    if (first < k)
        memcpy(dst + first, (char *)(uintptr_t)ring, k - first);
    __atomic_store_n(W(ctl, C_RX_HEAD), head + k, __ATOMIC_RELEASE);
    return out;
}

/* recv_into(ctl, ring, size, head, buffer, nbytes) -> k: copies up to nbytes (0: len(buffer)) buffered bytes
 * into the caller's writable contiguous buffer and publishes the head; 0 when nothing is buffered, -1 when
 * nbytes exceeds the buffer.  No object is allocated (IsoSocket.recv_into). */
static PyObject *fp_recv_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t ctl, ring, size, head, maxlen;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "recv_into(ctl, ring, size, head, buffer, maxlen)");
        return NULL;
    }
    if (get_u64(args[0], &ctl) || get_u64(args[1], &ring) || get_u64(args[2], &size) || get_u64(args[3], &head) ||
        get_u64(args[5], &maxlen))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[4], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (maxlen == 0)
        maxlen = (uint64_t)view.len;
    else if (maxlen > (uint64_t)view.len) {
        PyBuffer_Release(&view);
        return PyLong_FromLong(-1);
    }
    uint64_t tail = __atomic_load_n(W(ctl, C_RX_TAIL), __ATOMIC_ACQUIRE);
    uint64_t avail = tail - head;
    if (avail > size)
        avail = 0; /* impossible unless the memory is corrupt: let the slow path report */
    uint64_t k = avail < maxlen ? avail : maxlen;
    if (k) {
        uint64_t off = head & (size - 1);
        uint64_t first = size - off < k ? size - off : k;
        char *dst = view.buf;
        memcpy(dst, (char *)(uintptr_t)ring + off, first);
        if (first < k)
            memcpy(dst + first, (char *)(uintptr_t)ring, k - first);
        __atomic_store_n(W(ctl, C_RX_HEAD), head + k, __ATOMIC_RELEASE);
    }
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(k);
}

#define ADDR_ARGS(n)                                                                                                   \
    uint64_t a_, v_ = 0, w_ = 0;                                                                                       \
    (void)v_;                                                                                                          \
    (void)w_;                                                                                                          \
    if (nargs != (n)) {                                                                                                \
        PyErr_SetString(PyExc_TypeError, "wrong number of arguments");                                              \
        return NULL;                                                                                                   \
    }                                                                                                                  \
    if (get_u64(args[0], &a_) || ((n) > 1 && get_u64(args[1], &v_)) || ((n) > 2 && get_u64(args[2], &w_)))          \
        return NULL;                                                                                                   \
    uint64_t *p_ = (uint64_t *)(uintptr_t)a_;

static PyObject *fp_cas64(PyObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    ADDR_ARGS(3)
    return PyLong_FromLong(__atomic_compare_exchange_n(p_, &v_, w_, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
}
static PyObject *fp_xchg64(PyObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    ADDR_ARGS(2)
    return PyLong_FromUnsignedLongLong(__atomic_exchange_n(p_, v_, __ATOMIC_SEQ_CST));
}
static PyObject *fp_fetch_add64(PyObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    ADDR_ARGS(2)
    return PyLong_FromUnsignedLongLong(__atomic_fetch_add(p_, v_, __ATOMIC_SEQ_CST));
}
static PyObject *fp_fetch_or64(PyObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    ADDR_ARGS(2)
    return PyLong_FromUnsignedLongLong(__atomic_fetch_or(p_, v_, __ATOMIC_SEQ_CST));
}
static PyObject *fp_fence(PyObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

/* mpsc_push(tail_addr, slots_addr, nslots, body48) -> position, -1 full, -2 corrupt (see _atomics.c) */
static PyObject *fp_mpsc_push(PyObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t ta, sa, n;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "mpsc_push(tail, slots, nslots, body)");
        return NULL;
    }
    if (get_u64(args[0], &ta) || get_u64(args[1], &sa) || get_u64(args[2], &n))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[3], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (view.len != 48) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "body must be 48 bytes");
        return NULL;
    }
    uint64_t *tail = (uint64_t *)(uintptr_t)ta;
    unsigned char *slots = (unsigned char *)(uintptr_t)sa;
    uint64_t mask = n - 1;
    uint64_t pos = __atomic_load_n(tail, __ATOMIC_RELAXED);
    long long result = -2;
    for (uint32_t spins = 0; spins < 1000000u; spins++) {
        unsigned char *slot = slots + (pos & mask) * 64;
        uint64_t seq = __atomic_load_n((uint64_t *)slot, __ATOMIC_ACQUIRE);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (__atomic_compare_exchange_n(tail, &pos, pos + 1, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
                memcpy(slot + 16, view.buf, 48);
                __atomic_store_n((uint64_t *)(slot + 8), pos, __ATOMIC_RELAXED);
                __atomic_store_n((uint64_t *)slot, pos + 1, __ATOMIC_RELEASE);
                result = (long long)pos;
                break;
            }
        } else if (dif < 0) {
            result = -1;
            break;
        } else {
            pos = __atomic_load_n(tail, __ATOMIC_RELAXED);
        }
    }
    PyBuffer_Release(&view);
    return PyLong_FromLongLong(result);
}

/* getcpu() -> the CPU this thread runs on (glibc reads it from rseq: no system call); picks the notification ring */
static PyObject *fp_getcpu(PyObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    int cpu = sched_getcpu();
    return PyLong_FromLong(cpu < 0 ? 0 : cpu);
}

static PyObject *fp_layout(PyObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    return Py_BuildValue("(iiiiiiii)", C_TX_TAIL, C_RX_HEAD, C_DRAINING, C_TX_HEAD, C_RX_TAIL, C_STATE,
                         (int)ST_CONNECTED, (int)ST_ERROR);
}

static PyMethodDef methods[] = {
    {"send", (PyCFunction)(void (*)(void))fp_send, METH_FASTCALL, "copy into a tx ring, publish, maybe post"},
    {"recv", (PyCFunction)(void (*)(void))fp_recv, METH_FASTCALL, "copy out of an rx ring, publish the head"},
    {"recv_into", (PyCFunction)(void (*)(void))fp_recv_into, METH_FASTCALL, "copy out of an rx ring into a buffer"},
    {"cas64", (PyCFunction)(void (*)(void))fp_cas64, METH_FASTCALL, "compare and swap"},
    {"xchg64", (PyCFunction)(void (*)(void))fp_xchg64, METH_FASTCALL, "exchange"},
    {"fetch_add64", (PyCFunction)(void (*)(void))fp_fetch_add64, METH_FASTCALL, "fetch and add"},
    {"fetch_or64", (PyCFunction)(void (*)(void))fp_fetch_or64, METH_FASTCALL, "fetch and or"},
    {"fence", (PyCFunction)(void (*)(void))fp_fence, METH_FASTCALL, "full fence"},
    {"mpsc_push", (PyCFunction)(void (*)(void))fp_mpsc_push, METH_FASTCALL, "Vyukov enqueue"},
    {"getcpu", (PyCFunction)(void (*)(void))fp_getcpu, METH_FASTCALL, "CPU of the calling thread"},
    {"layout", (PyCFunction)(void (*)(void))fp_layout, METH_FASTCALL, "word indices compiled in"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void) { return PyModule_Create(&module); }

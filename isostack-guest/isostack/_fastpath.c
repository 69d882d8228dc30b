/* CPython extension: the front-end's per-message fast path and the atomics, without ctypes.
 *
 * Why: a ctypes call, and the Python send path even more, cost many times a kernel send() per 64-byte
 * message in a TCG guest (docs/measurements.md); one extension call that copies into the ring, publishes the
 * tail and checks the draining flag brings the per-message work down to one C call (isoperf.stackbench
 * measures it). Word indices must match layout.py (checked at import by native.py).
 *
 * Longer than the project's ~500-line guide on purpose: the send path (Tx), the receive path and the atomics
 * share the ring and control-word helpers, and the guests load this one extension (no compiler there).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "isostack_abi.h"

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

/* Vyukov enqueue of a 48-byte body: position, -1 full, -2 corrupt (isostack_abi.h, shared with the shim) */
static long long mpsc_push_raw(uint64_t ta, uint64_t sa, uint64_t n, const void *body)
{
    return (long long)iso_abi_push((uint64_t *)(uintptr_t)ta, (unsigned char *)(uintptr_t)sa, n, body);
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
    long long result = mpsc_push_raw(ta, sa, n, view.buf);
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

/* ---------------------------------------------------------------- Tx: one socket's send path in one C call
 *
 * Tx(ctl, ring, size, tail, asym, slow_send, slow_sendall, post) holds a socket's tx tail (the front-end's own
 * copy; the dispatcher validates whatever it finds in the shared word).  IsoSocket installs its bound send and
 * sendall as the instance's `send`/`sendall`, so `sock.send(msg)` is one C call: copy into the ring, publish
 * the tail (release), and only when the draining flag was clear (xchg decides; with asym a plain load first)
 * call post(tail) to post SEND (and kick a sleeping dispatcher).  Every other case goes to the Python slow
 * path with the caller's arguments unchanged: fast off (closed, shut down, waiting for credits), flags or
 * keywords, a buffer that is not simple, empty data, a socket that is not connected or failed, no credits;
 * sendall continues with slow_sendall(data, 0, sent) when the credits ran out part-way.
 *
 * With the optional 9th argument, a tuple (body, cmdq_tail, cmdq_slots, nslots, pending_word, pending_bit,
 * sleeping_word, kicks_word, kick_fd, counter), the SEND is posted here too: `body` is the socket's 48-byte SEND
 * entry (its tail field, at byte 8, is filled in), pushed onto the socket's command queue, then the socket's
 * bit is set in the pending bitmap and, if the dispatcher announced that it sleeps, the kick eventfd written
 * (as Instance._pending does); counter[0] (a writable buffer) counts the SENDs posted.  No Python runs between
 * winning the draining flag and the SEND being queued, so no other thread (the GIL) can delay it.  A full or
 * corrupt queue goes to post(tail), which retries and hands the flag back on failure.
 */
typedef struct {
    PyObject_HEAD
    uint64_t ctl, ring, size, tail, asym;
    int fast;
    PyObject *slow_send, *slow_sendall, *post;
    /* the C post (cq_slots == 0: post through the Python callable only) */
    unsigned char body[48];
    uint64_t cq_tail, cq_slots, cq_n, pending, pending_bit, sleeping, kicks;
    int kick_fd;
    PyObject *counter_obj;
    Py_buffer counter;
} TxObject;

static int tx_traverse(TxObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->slow_send);
    Py_VISIT(self->slow_sendall);
    Py_VISIT(self->post);
    Py_VISIT(self->counter_obj);
    return 0;
}

static void tx_drop_cpost(TxObject *self)
{
    if (self->counter_obj) {
        PyBuffer_Release(&self->counter);
        Py_CLEAR(self->counter_obj);
    }
    self->cq_slots = 0;
}

static int tx_clear(TxObject *self)
{
    Py_CLEAR(self->slow_send);
    Py_CLEAR(self->slow_sendall);
    Py_CLEAR(self->post);
    tx_drop_cpost(self);
    self->fast = 0;
    return 0;
}

static void tx_dealloc(TxObject *self)
{
    PyObject_GC_UnTrack(self);
    tx_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int tx_init(TxObject *self, PyObject *args, PyObject *kw)
{
    unsigned long long ctl, ring, size, tail, asym;
    PyObject *ss, *sa, *po, *cpost = NULL;
    if (!PyArg_ParseTuple(args, "KKKKKOOO|O:Tx", &ctl, &ring, &size, &tail, &asym, &ss, &sa, &po, &cpost))
        return -1;
    if (size == 0 || (size & (size - 1))) {
        PyErr_SetString(PyExc_ValueError, "ring size must be a power of two");
        return -1;
    }
    if (!PyCallable_Check(ss) || !PyCallable_Check(sa) || !PyCallable_Check(po)) {
        PyErr_SetString(PyExc_TypeError, "slow_send, slow_sendall and post must be callable");
        return -1;
    }
    tx_drop_cpost(self);
    if (cpost && cpost != Py_None) {
        Py_buffer body;
        unsigned long long ct, cs, cn, pw, pb, sw, kw;
        int kfd;
        PyObject *counter;
        if (!PyArg_ParseTuple(cpost, "y*KKKKKKKiO:Tx post", &body, &ct, &cs, &cn, &pw, &pb, &sw, &kw, &kfd, &counter))
            return -1;
        int bad = body.len != 48 || cn == 0 || (cn & (cn - 1));
        if (!bad)
            memcpy(self->body, body.buf, 48);
        PyBuffer_Release(&body);
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "Tx post: body must be 48 bytes and nslots a power of two");
            return -1;
        }
        if (PyObject_GetBuffer(counter, &self->counter, PyBUF_WRITABLE) < 0)
            return -1;
        if (self->counter.len < 8) {
            PyBuffer_Release(&self->counter);
            PyErr_SetString(PyExc_ValueError, "Tx post: counter must hold 8 bytes");
            return -1;
        }
        Py_INCREF(counter);
        self->counter_obj = counter;
        self->cq_tail = ct, self->cq_slots = cs, self->cq_n = cn, self->pending = pw, self->pending_bit = pb;
        self->sleeping = sw, self->kicks = kw, self->kick_fd = kfd;
    }
    self->ctl = ctl, self->ring = ring, self->size = size, self->tail = tail, self->asym = asym;
    Py_INCREF(ss), Py_INCREF(sa), Py_INCREF(po);
    Py_XSETREF(self->slow_send, ss);
    Py_XSETREF(self->slow_sendall, sa);
    Py_XSETREF(self->post, po);
    self->fast = 1;
    return 0;
}

/* Copies what fits of view; -1: not connected or failed, else the bytes copied (0: no credits).  *post is
 * set when the caller must post SEND. */
static int64_t tx_copy(TxObject *t, const char *buf, uint64_t len, int *post)
{
    uint64_t st = __atomic_load_n(W(t->ctl, C_STATE), __ATOMIC_ACQUIRE);
    *post = 0;
    if ((st & ST_ERROR) || !(st & ST_CONNECTED))
        return -1;
    uint64_t size = t->size, tail = t->tail;
    uint64_t head = __atomic_load_n(W(t->ctl, C_TX_HEAD), __ATOMIC_ACQUIRE);
    uint64_t used = tail - head;
    uint64_t free_ = used > size ? 0 : size - used;
    uint64_t k = len < free_ ? len : free_;
    if (!k)
        return 0;
    uint64_t off = tail & (size - 1);
    uint64_t first = size - off < k ? size - off : k;
    memcpy((char *)(uintptr_t)t->ring + off, buf, first);
    if (first < k)
        memcpy((char *)(uintptr_t)t->ring, buf + first, k - first);
    t->tail = tail + k;
    __atomic_store_n(W(t->ctl, C_TX_TAIL), tail + k, __ATOMIC_RELEASE);
    uint64_t *dr = W(t->ctl, C_DRAINING);
    if (!t->asym || !__atomic_load_n(dr, __ATOMIC_RELAXED))
        *post = __atomic_exchange_n(dr, 1, __ATOMIC_SEQ_CST) == 0;
    return (int64_t)k;
}

/* The fast path applies to (data) and (data, 0) without keywords. */
static int tx_plain_args(TxObject *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (!t->fast || kwnames || nargs < 1 || nargs > 2)
        return 0;
    if (nargs == 2) {
        if (!PyLong_CheckExact(args[1]))
            return 0;
        int overflow;
        long f = PyLong_AsLongAndOverflow(args[1], &overflow);
        if (f != 0 || overflow)
            return 0;
    }
    return 1;
}

static int tx_post(TxObject *t)
{
    if (t->cq_slots) {
        unsigned char body[48];
        memcpy(body, t->body, 48);
        memcpy(body + 8, &t->tail, 8); /* the entry's `a`: the tx tail at the post (x86-64: little endian) */
        if (mpsc_push_raw(t->cq_tail, t->cq_slots, t->cq_n, body) >= 0) {
            __atomic_fetch_or((uint64_t *)(uintptr_t)t->pending, t->pending_bit, __ATOMIC_SEQ_CST);
            /* the locked OR above orders our stores before this load (Dekker with the dispatcher's sleep) */
            if (__atomic_load_n((uint64_t *)(uintptr_t)t->sleeping, __ATOMIC_RELAXED)) {
                __atomic_fetch_add((uint64_t *)(uintptr_t)t->kicks, 1, __ATOMIC_RELAXED);
                uint64_t one = 1;
                if (write(t->kick_fd, &one, sizeof one) < 0) {
                    /* EAGAIN: the counter is full, the dispatcher wakes anyway; nothing else can be done */
                }
            }
            ((uint64_t *)t->counter.buf)[0] += 1;
            return 0;
        }
        /* full or corrupt: the Python path retries, and hands the draining flag back if it must give up */
    }
    PyObject *tail = PyLong_FromUnsignedLongLong(t->tail);
    if (!tail)
        return -1;
    PyObject *r = PyObject_CallOneArg(t->post, tail);
    Py_DECREF(tail);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *tx_send(TxObject *t, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (tx_plain_args(t, args, nargs, kwnames)) {
        Py_buffer view;
        if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) == 0) {
            int post;
            int64_t k = view.len > 0 ? tx_copy(t, view.buf, (uint64_t)view.len, &post) : 0;
            PyBuffer_Release(&view);
            if (k > 0) {
                if (post && tx_post(t) < 0)
                    return NULL;
                return PyLong_FromLongLong(k);
            }
        } else
            PyErr_Clear();
    }
    if (!t->slow_send) {
        PyErr_SetString(PyExc_ValueError, "Tx cleared");
        return NULL;
    }
    return PyObject_Vectorcall(t->slow_send, args, nargsf, kwnames);
}

static PyObject *tx_sendall(TxObject *t, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    int64_t k = 0;
    if (tx_plain_args(t, args, nargs, kwnames)) {
        Py_buffer view;
        if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) == 0) {
            int post = 0;
            uint64_t len = (uint64_t)view.len;
            k = len > 0 ? tx_copy(t, view.buf, len, &post) : 0;
            PyBuffer_Release(&view);
            if (k > 0 && post && tx_post(t) < 0)
                return NULL;
            if (k > 0 && (uint64_t)k == len)
                Py_RETURN_NONE;
            if (k < 0)
                k = 0;
        } else
            PyErr_Clear();
    }
    if (!t->slow_sendall) {
        PyErr_SetString(PyExc_ValueError, "Tx cleared");
        return NULL;
    }
    if (k == 0)
        return PyObject_Vectorcall(t->slow_sendall, args, nargsf, kwnames);
    /* part sent: the rest through the slow path (the flags were 0) */
    PyObject *sent = PyLong_FromLongLong(k);
    if (!sent)
        return NULL;
    PyObject *zero = PyLong_FromLong(0);
    PyObject *r = PyObject_CallFunctionObjArgs(t->slow_sendall, args[0], zero, sent, NULL);
    Py_DECREF(sent);
    Py_XDECREF(zero);
    return r;
}

static PyObject *tx_get_tail(TxObject *t, void *c) { return PyLong_FromUnsignedLongLong(t->tail); }
static int tx_set_tail(TxObject *t, PyObject *v, void *c)
{
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete tail");
        return -1;
    }
    uint64_t x;
    if (get_u64(v, &x))
        return -1;
    t->tail = x;
    return 0;
}
static PyObject *tx_get_fast(TxObject *t, void *c) { return PyBool_FromLong(t->fast); }
static int tx_set_fast(TxObject *t, PyObject *v, void *c)
{
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete fast");
        return -1;
    }
    int b = PyObject_IsTrue(v);
    if (b < 0)
        return -1;
    t->fast = b && t->slow_send != NULL;
    return 0;
}

static PyGetSetDef tx_getset[] = {
    {"tail", (getter)tx_get_tail, (setter)tx_set_tail, "the front-end's tx tail", NULL},
    {"fast", (getter)tx_get_fast, (setter)tx_set_fast, "the C path may serve a call", NULL},
    {NULL},
};

static PyMethodDef tx_methods[] = {
    {"send", (PyCFunction)(void (*)(void))tx_send, METH_FASTCALL | METH_KEYWORDS, "IsoSocket.send in C"},
    {"sendall", (PyCFunction)(void (*)(void))tx_sendall, METH_FASTCALL | METH_KEYWORDS, "IsoSocket.sendall in C"},
    {NULL},
};

static PyTypeObject TxType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "isostack._fastpath.Tx",
    .tp_basicsize = sizeof(TxObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)tx_init,
    .tp_dealloc = (destructor)tx_dealloc,
    .tp_traverse = (traverseproc)tx_traverse,
    .tp_clear = (inquiry)tx_clear,
    .tp_methods = tx_methods,
    .tp_getset = tx_getset,
    .tp_doc = "one socket's send path (see the comment in _fastpath.c)",
};

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

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&TxType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&TxType);
    if (PyModule_AddObject(m, "Tx", (PyObject *)&TxType) < 0) {
        Py_DECREF(&TxType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

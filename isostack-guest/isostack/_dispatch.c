/* CPython extension: isostackd's per-slot hot path, the work the loop does for every message.
 *
 * Why: in the Python data path one tx drain or rx fill cost several microseconds of interpreter work around
 * one kernel call (memoryview slices, index checks, stores into the control page); an RR transaction pays
 * that twice, and a stream pays it per drain. Here each step is one C call; Python keeps the decisions
 * (epoll registration, stats, failing a socket, doorbells). The Python reference of each step is in
 * dispatcher/ringio.py; tests/test_isostack_dispatch_native.py checks that both give the same ring
 * contents, indices, notifications and errors on the same inputs, hostile ones included.
 *
 * Trust: the addresses and ring sizes come from the dispatcher (its geometry of the application's region);
 * every index read from the region is the application's and is checked before it addresses anything: a
 * ring offset is always an index masked by the ring's size, a length never exceeds what the checked
 * indices allow. The region is a sealed memfd (it cannot shrink), so no access here can fault.
 * Word indices must match layout.py (checked at import by native.load_dispatch).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define C_TX_TAIL 8
#define C_RX_HEAD 16
#define C_TX_HEAD 40
#define C_RX_TAIL 41
/* notification ring header words, relative to the ring's header */
#define R_HEAD 0
#define R_TAIL 8
#define R_DROPPED 11
#define NOTIF_ENTRY_SIZE 16

static inline uint64_t *W(uintptr_t base, uint64_t w) { return (uint64_t *)(base + 8 * (uintptr_t)w); }

static int get_u64(PyObject *o, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

static int get_args(const char *usage, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, uint64_t *out)
{
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    for (Py_ssize_t i = 0; i < want; i++)
        if (get_u64(args[i], &out[i]))
            return -1;
    return 0;
}

/* A ring size the dispatcher passes is a power of two (Geometry.check); anything else is a caller's bug. */
static int check_size(uint64_t size)
{
    if (size == 0 || (size & (size - 1))) {
        PyErr_SetString(PyExc_ValueError, "ring size must be a power of two");
        return -1;
    }
    return 0;
}

/* The one or two pieces of `len` bytes at free-running index `at` in a ring (layout.ring_spans). */
static int spans(struct iovec *iov, uintptr_t ring, uint64_t size, uint64_t at, uint64_t len)
{
    uint64_t off = at & (size - 1);
    uint64_t first = size - off < len ? size - off : len;
    iov[0].iov_base = (void *)(ring + off);
    iov[0].iov_len = first;
    if (first == len)
        return 1;
    iov[1].iov_base = (void *)ring;
    iov[1].iov_len = len - first;
    return 2;
}

/* tx_drain(fd, ctl, ring, size, head) -> (used, sent)
 * used: bytes the tx ring holds (the application's tail - head); -1 when that tail is impossible (sent is then
 * the tail read, for the error message); 0: no kernel call was made.
 * sent: bytes the kernel took, published as C_TX_HEAD = head + sent; 0 when it would block; -errno on error.
 */
static PyObject *dp_tx_drain(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t a[5];
    if (get_args("tx_drain(fd, ctl, ring, size, head)", args, nargs, 5, a) || check_size(a[3]))
        return NULL;
    int fd = (int)a[0];
    uintptr_t ctl = (uintptr_t)a[1], ring = (uintptr_t)a[2];
    uint64_t size = a[3], head = a[4];
    uint64_t tail = __atomic_load_n(W(ctl, C_TX_TAIL), __ATOMIC_ACQUIRE);
    if (tail < head || tail - head > size)
        return Py_BuildValue("(LK)", (long long)-1, (unsigned long long)tail);
    uint64_t used = tail - head;
    if (used == 0)
        return Py_BuildValue("(ii)", 0, 0);
    struct iovec iov[2];
    struct msghdr msg = {0};
    msg.msg_iov = iov;
    msg.msg_iovlen = spans(iov, ring, size, head, used);
    ssize_t n;
    do
        n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    long long sent = n >= 0 ? n : (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -(long long)errno;
    if (sent >= 0) /* also when it would block: C_TX_HEAD is ours, rewritten as the Python path does */
        __atomic_store_n(W(ctl, C_TX_HEAD), head + (uint64_t)sent, __ATOMIC_RELEASE);
    return Py_BuildValue("(KL)", (unsigned long long)used, sent);
}

/* rx_fill(fd, ctl, ring, size, tail) -> (used, received)
 * used: bytes the rx ring held (tail - the application's head); -1 when that head is impossible (received is
 * then the head read); == size: the ring is full and no kernel call was made.
 * received: > 0 bytes added, published as C_RX_TAIL = tail + received; 0 at EOF; -errno (-EAGAIN: nothing).
 */
static PyObject *dp_rx_fill(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t a[5];
    if (get_args("rx_fill(fd, ctl, ring, size, tail)", args, nargs, 5, a) || check_size(a[3]))
        return NULL;
    int fd = (int)a[0];
    uintptr_t ctl = (uintptr_t)a[1], ring = (uintptr_t)a[2];
    uint64_t size = a[3], tail = a[4];
    uint64_t head = __atomic_load_n(W(ctl, C_RX_HEAD), __ATOMIC_ACQUIRE);
    if (tail < head || tail - head > size)
        return Py_BuildValue("(LK)", (long long)-1, (unsigned long long)head);
    uint64_t used = tail - head;
    if (used == size)
        return Py_BuildValue("(Ki)", (unsigned long long)used, 0);
    struct iovec iov[2];
    struct msghdr msg = {0};
    msg.msg_iov = iov;
    msg.msg_iovlen = spans(iov, ring, size, tail, size - used);
    ssize_t n;
    do
        n = recvmsg(fd, &msg, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n > 0)
        __atomic_store_n(W(ctl, C_RX_TAIL), tail + (uint64_t)n, __ATOMIC_RELEASE);
    return Py_BuildValue("(KL)", (unsigned long long)used, n >= 0 ? (long long)n : -(long long)errno);
}

/* notify(header, entries, nslots, sock, events, seq) -> True posted, False full (R_DROPPED counted).
 * queues.NotifyRing.post, word for word: the indices are the application's and wrap; a head past the tail
 * (hostile) is not "full", as in the Python ring. */
static PyObject *dp_notify(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t a[6];
    if (get_args("notify(header, entries, nslots, sock, events, seq)", args, nargs, 6, a) || check_size(a[2]))
        return NULL;
    uintptr_t hdr = (uintptr_t)a[0], entries = (uintptr_t)a[1];
    uint64_t nslots = a[2];
    if (a[3] > UINT32_MAX || a[4] > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "socket and events are 32-bit");
        return NULL;
    }
    uint64_t tail = __atomic_load_n(W(hdr, R_TAIL), __ATOMIC_RELAXED);
    uint64_t head = __atomic_load_n(W(hdr, R_HEAD), __ATOMIC_ACQUIRE);
    if (tail >= head && tail - head >= nslots) {
        __atomic_store_n(W(hdr, R_DROPPED), __atomic_load_n(W(hdr, R_DROPPED), __ATOMIC_RELAXED) + 1,
                         __ATOMIC_RELEASE);
        Py_RETURN_FALSE;
    }
    unsigned char *e = (unsigned char *)(entries + (tail & (nslots - 1)) * NOTIF_ENTRY_SIZE);
    uint32_t sock = (uint32_t)a[3], events = (uint32_t)a[4];
    uint64_t seq = a[5];
    memcpy(e, &sock, 4);
    memcpy(e + 4, &events, 4);
    memcpy(e + 8, &seq, 8);
    __atomic_store_n(W(hdr, R_TAIL), tail + 1, __ATOMIC_RELEASE);
    Py_RETURN_TRUE;
}

static PyObject *dp_layout(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return Py_BuildValue("(iiiiiiii)", C_TX_TAIL, C_RX_HEAD, C_TX_HEAD, C_RX_TAIL, R_HEAD, R_TAIL, R_DROPPED,
                         NOTIF_ENTRY_SIZE);
}

static PyMethodDef methods[] = {
    {"tx_drain", (PyCFunction)(void (*)(void))dp_tx_drain, METH_FASTCALL, "send what a tx ring holds"},
    {"rx_fill", (PyCFunction)(void (*)(void))dp_rx_fill, METH_FASTCALL, "receive into an rx ring's free space"},
    {"notify", (PyCFunction)(void (*)(void))dp_notify, METH_FASTCALL, "post to a notification ring"},
    {"layout", (PyCFunction)(void (*)(void))dp_layout, METH_FASTCALL, "word indices compiled in"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dispatch", NULL, -1, methods};

PyMODINIT_FUNC PyInit__dispatch(void) { return PyModule_Create(&module); }

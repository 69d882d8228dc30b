/* CPython extension: isoperf's STREAM send loop in C, as netperf's is.
 *
 * Why: in a TCG guest the Python loop around one 64-byte send (`while not stop.is_set(): sendall(msg); ...`)
 * costs more application CPU than IsoStack's whole send (one C call into the ring), so a Python loop measures
 * the interpreter rather than the stack.  This loop calls the very same `sendall` (a kernel socket's or an
 * IsoSocket's, whichever stack is measured), once per message, so both stacks get the same driver and the
 * comparison stays fair: only the loop around the call is cheaper.
 *
 * send_loop(sendall, msg, stop, counter) -> calls made
 *   Calls sendall(msg) until stop() is true; stop is checked every CHECK_EVERY calls (and before the first).
 *   After every call the number of calls made so far is stored in counter[0] (a writable buffer of at least
 *   8 bytes, e.g. array('Q', [0])), so another thread can read the progress while the loop runs.
 *   Every switch interval (sys.getswitchinterval(), checked every CHECK_EVERY calls) the GIL is released and
 *   taken again, as the interpreter's own loop does, so that the other threads (isoperf's control thread,
 *   another connection's loop) run even when sendall never releases it (an IsoSocket's C path).  Releasing it
 *   more often costs a thread switch each time.
 *   An exception from sendall or stop ends the loop and propagates; counter[0] then holds the calls that
 *   completed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <time.h>

#define CHECK_EVERY 64

static int stop_requested(PyObject *stop)
{
    PyObject *r = PyObject_CallNoArgs(stop);
    if (!r)
        return -1;
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* sys.getswitchinterval(), or 5 ms where it cannot be read */
static double switch_interval(void)
{
    PyObject *sys = PyImport_ImportModule("sys");
    PyObject *r = sys ? PyObject_CallMethod(sys, "getswitchinterval", NULL) : NULL;
    double v = r ? PyFloat_AsDouble(r) : -1.0;
    Py_XDECREF(r);
    Py_XDECREF(sys);
    if (PyErr_Occurred())
        PyErr_Clear();
    return v > 0 ? v : 0.005;
}

static PyObject *send_loop(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "send_loop(sendall, msg, stop, counter)");
        return NULL;
    }
    PyObject *sendall = args[0], *stop = args[2];
    if (!PyCallable_Check(sendall) || !PyCallable_Check(stop)) {
        PyErr_SetString(PyExc_TypeError, "send_loop: sendall and stop must be callable");
        return NULL;
    }
    Py_buffer counter;
    if (PyObject_GetBuffer(args[3], &counter, PyBUF_WRITABLE) < 0)
        return NULL;
    if (counter.len < (Py_ssize_t)sizeof(uint64_t)) {
        PyBuffer_Release(&counter);
        PyErr_SetString(PyExc_ValueError, "send_loop: counter must hold at least 8 bytes");
        return NULL;
    }
    volatile uint64_t *count = (volatile uint64_t *)counter.buf;
    PyObject *call_args[2] = {NULL, args[1]}; /* slot 0 free for PY_VECTORCALL_ARGUMENTS_OFFSET */
    uint64_t n = 0;
    PyObject *failed = NULL;
    double interval = switch_interval(), released = now_s();
    for (;;) {
        if (n % CHECK_EVERY == 0) {
            double now = now_s();
            if (now - released >= interval) {
                Py_BEGIN_ALLOW_THREADS
                Py_END_ALLOW_THREADS
                released = now;
            }
            int stopping = stop_requested(stop);
            if (stopping < 0) {
                failed = stop;
                break;
            }
            if (stopping)
                break;
        }
        PyObject *r = PyObject_Vectorcall(sendall, call_args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (!r) {
            failed = sendall;
            break;
        }
        Py_DECREF(r);
        *count = ++n;
    }
    PyBuffer_Release(&counter);
    if (failed)
        return NULL;
    return PyLong_FromUnsignedLongLong(n);
}

static PyMethodDef methods[] = {
    {"send_loop", (PyCFunction)(void (*)(void))send_loop, METH_FASTCALL,
     "send_loop(sendall, msg, stop, counter) -> calls made (see _sendloop.c)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sendloop", NULL, -1, methods};

PyMODINIT_FUNC PyInit__sendloop(void) { return PyModule_Create(&module); }

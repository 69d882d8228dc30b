/* vhea's native datapath: the per-frame inner loops of the split-ring walk, as a CPython extension.
 *
 * The Python code in vring.py / net.py is the reference; this file does the same walk with the same checks
 * and the same error texts, for a whole batch per call:
 *   tx_pull  avail -> descriptor chains (every index, address, length, chain length and indirect table checked
 *            against the ring size and the mapped regions) -> frames copied into an arena -> used ring + idx;
 *   rx_push  frames from an arena (or any buffer) -> lone device-writable buffers of an rx ring (MRG_RXBUF:
 *            several) -> used ring + idx; anything else (chained or indirect rx buffers) is handed back.
 * A guest may rewrite its descriptors while we read them: each descriptor is read once (volatile) into
 * locals, translated, and only the translated (pointer, length) pairs are used afterwards.
 * Ring indices are loaded and stored as single 16-bit accesses (x86: stores stay in order, so used elements
 * land before the used idx; the caller does the full fence before reading used_event).
 * Errors never raise for guest faults: they come back as a message, and nothing of a refused tx batch is
 * consumed (the Python path refuses the whole batch as well).
 *
 * Longer than the project's ~500-line guide on purpose: tx_pull and rx_push share the descriptor translation
 * and the bounds checks, which must stay one piece of code (one place to audit against a hostile guest), and a
 * single-file extension is what setup.py builds for the host.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4
#define MAX_RING 32768
#define MAX_INDIRECT 1024
#define MAX_REGIONS 64
#define MIN_FRAME 14
#define MAX_FRAME (65535 + 18)
#define NEEDS_CSUM 1
#define ERRLEN 200

#define barrier() __asm__ __volatile__("" ::: "memory")

struct region {
    uint64_t gpa, size;
    uint8_t *host;
};

typedef struct {
    PyObject_HEAD
    int n;
    int open;
    struct region r[MAX_REGIONS];
    Py_buffer buf[MAX_REGIONS];
} MemoryObject;

struct seg {
    uint8_t *p;
    uint32_t len;
};

/* scratch for one chain: main table (<= MAX_RING) plus one indirect table (<= MAX_INDIRECT). The GIL is held
 * throughout, so one static scratch serves every server in the process. */
static struct seg scratch[MAX_RING + MAX_INDIRECT + 1];
/* the heads of a batch as read (and checked) once: the used ring gets exactly these */
static uint16_t heads[MAX_RING];

/* ---- Memory: the regions of one SET_MEM_TABLE, holding buffer exports so the mmaps cannot go away ---- */

static void Memory_release(MemoryObject *self) {
    if (self->open) {
        for (int i = 0; i < self->n; i++)
            PyBuffer_Release(&self->buf[i]);
        self->open = 0;
        self->n = 0;
    }
}

static void Memory_dealloc(MemoryObject *self) {
    Memory_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Memory_init(MemoryObject *self, PyObject *args, PyObject *kw) {
    PyObject *list;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &list))
        return -1;
    Memory_release(self);
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (n > MAX_REGIONS) {
        PyErr_SetString(PyExc_ValueError, "too many regions");
        return -1;
    }
    self->open = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long gpa, size;
        PyObject *view;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(list, i), "KKO", &gpa, &size, &view))
            goto fail;
        if (PyObject_GetBuffer(view, &self->buf[i], PyBUF_WRITABLE) < 0)
            goto fail;
        self->n = (int)i + 1;
        if ((unsigned long long)self->buf[i].len < size) {
            PyErr_SetString(PyExc_ValueError, "region buffer is smaller than the region");
            goto fail;
        }
        self->r[i].gpa = gpa;
        self->r[i].size = size;
        self->r[i].host = self->buf[i].buf;
    }
    return 0;
fail:
    Memory_release(self);
    return -1;
}

static PyObject *Memory_close(MemoryObject *self, PyObject *unused) {
    Memory_release(self);
    Py_RETURN_NONE;
}

static PyMethodDef Memory_methods[] = {
    {"close", (PyCFunction)Memory_close, METH_NOARGS, "release the region buffers"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MemoryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "vhea._datapath.Memory",
    .tp_basicsize = sizeof(MemoryObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Memory_init,
    .tp_dealloc = (destructor)Memory_dealloc,
    .tp_methods = Memory_methods,
    .tp_doc = "guest memory regions: [(gpa, size, writable buffer)]",
};

/* [addr, addr+len) inside one region (same test as GuestMemory.gpa: 0 <= off and off + len <= size) */
static inline uint8_t *xlate(const MemoryObject *m, uint64_t addr, uint64_t len) {
    for (int i = 0; i < m->n; i++) {
        const struct region *r = &m->r[i];
        if (addr >= r->gpa) {
            uint64_t off = addr - r->gpa;
            if (off <= r->size && len <= r->size - off)
                return r->host + off;
        }
    }
    return NULL;
}

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

static inline void read_desc(const uint8_t *table, uint32_t idx, struct desc *d) {
    const volatile struct desc *s = (const volatile struct desc *)(table + 16 * (size_t)idx);
    d->addr = s->addr;
    d->len = s->len;
    d->flags = s->flags;
    d->next = s->next;
}

/* ring views as the caller passes them: desc (16*num bytes), avail (>= 6 + 2*num), used (>= 6 + 8*num) */
struct ring {
    Py_buffer desc, avail, used;
    uint32_t num;
    int have;
};

static int get_ring(struct ring *r, PyObject *desc, PyObject *avail, PyObject *used, unsigned int num) {
    r->have = 0;
    if (num == 0 || num > MAX_RING || (num & (num - 1))) {
        PyErr_SetString(PyExc_ValueError, "bad ring size");
        return -1;
    }
    if (PyObject_GetBuffer(desc, &r->desc, PyBUF_SIMPLE) < 0)
        return -1;
    if (PyObject_GetBuffer(avail, &r->avail, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&r->desc);
        return -1;
    }
    if (PyObject_GetBuffer(used, &r->used, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&r->desc);
        PyBuffer_Release(&r->avail);
        return -1;
    }
    r->have = 1;
    r->num = num;
    if ((size_t)r->desc.len < 16 * (size_t)num || (size_t)r->avail.len < 6 + 2 * (size_t)num ||
        (size_t)r->used.len < 6 + 8 * (size_t)num) {
        PyErr_SetString(PyExc_ValueError, "ring views are smaller than the ring");
        return -1;
    }
    return 0;
}

static void put_ring(struct ring *r) {
    if (r->have) {
        PyBuffer_Release(&r->desc);
        PyBuffer_Release(&r->avail);
        PyBuffer_Release(&r->used);
        r->have = 0;
    }
}

static inline uint16_t load16(const void *p) { return *(const volatile uint16_t *)p; }
static inline void store16(void *p, uint16_t v) { *(volatile uint16_t *)p = v; }

static inline uint16_t avail_idx(const struct ring *r) { return load16((const uint8_t *)r->avail.buf + 2); }
static inline uint16_t avail_head(const struct ring *r, uint32_t pos) {
    return load16((const uint8_t *)r->avail.buf + 4 + 2 * (pos & (r->num - 1)));
}
static inline void put_used(struct ring *r, uint16_t used_idx, uint32_t head, uint32_t len) {
    volatile uint32_t *e = (volatile uint32_t *)((uint8_t *)r->used.buf + 4 + 8 * (used_idx & (r->num - 1)));
    e[0] = head;
    e[1] = len;
}
/* used idx (and, with EVENT_IDX, avail_event: kick us for anything past last_avail) */
static inline void publish(struct ring *r, uint16_t used_idx, uint16_t last_avail, int event_idx) {
    barrier();
    store16((uint8_t *)r->used.buf + 2, used_idx);
    if (event_idx)
        store16((uint8_t *)r->used.buf + 4 + 8 * r->num, last_avail);
    barrier();
}

/* Walk one chain into scratch (Vring.chain): returns the segment count, or -1 with err filled in. */
static int walk_chain(const MemoryObject *m, const struct ring *r, uint32_t head, int indirect_ok, uint64_t *total,
                      int *any_write, char *err) {
    const uint8_t *table = r->desc.buf;
    uint32_t table_len = r->num, idx = head, count = 0;
    int in_indirect = 0, n = 0, wr = 0;
    uint64_t tot = 0;
    struct desc d;
    for (;;) {
        if (idx >= table_len) {
            snprintf(err, ERRLEN, "descriptor index %u out of range %u (chain from %u)", idx, table_len, head);
            return -1;
        }
        read_desc(table, idx, &d);
        if (d.flags & F_INDIRECT) {
            if (!indirect_ok) {
                snprintf(err, ERRLEN, "indirect descriptor but INDIRECT_DESC was not negotiated");
                return -1;
            }
            if (in_indirect) {
                snprintf(err, ERRLEN, "nested indirect descriptor");
                return -1;
            }
            if (d.flags & F_NEXT) {
                snprintf(err, ERRLEN, "indirect descriptor with NEXT set");
                return -1;
            }
            if (d.len == 0 || d.len % 16 || d.len / 16 > MAX_INDIRECT) {
                snprintf(err, ERRLEN, "indirect table length %u invalid", d.len);
                return -1;
            }
            const uint8_t *t = xlate(m, d.addr, d.len);
            if (t == NULL) {
                snprintf(err, ERRLEN, "indirect table: guest address 0x%llx+%u is outside the mapped memory",
                         (unsigned long long)d.addr, d.len);
                return -1;
            }
            table = t;
            table_len = d.len / 16;
            idx = 0;
            count = 0;
            in_indirect = 1;
            continue;
        }
        count++;
        if (count > table_len) {
            snprintf(err, ERRLEN, "descriptor chain from %u longer than its table (%u): loop?", head, table_len);
            return -1;
        }
        uint8_t *p = xlate(m, d.addr, d.len);
        if (p == NULL) {
            snprintf(err, ERRLEN, "descriptor %u: guest address 0x%llx+%u is outside the mapped memory", idx,
                     (unsigned long long)d.addr, d.len);
            return -1;
        }
        scratch[n].p = p;
        scratch[n].len = d.len;
        n++;
        tot += d.len;
        wr |= d.flags & F_WRITE;
        if (!(d.flags & F_NEXT))
            break;
        idx = d.next;
    }
    *total = tot;
    *any_write = wr;
    return n;
}

static MemoryObject *get_mem(PyObject *o) {
    if (!PyObject_TypeCheck(o, &MemoryType)) {
        PyErr_SetString(PyExc_TypeError, "expected a Memory");
        return NULL;
    }
    MemoryObject *m = (MemoryObject *)o;
    if (!m->open) {
        PyErr_SetString(PyExc_ValueError, "Memory is closed");
        return NULL;
    }
    return m;
}

/* tx_pull(mem, desc, avail, used, num, last_avail, used_idx, event_idx, indirect, budget, hdr_len,
 *         arena, meta, runs)
 * -> (consumed, frames, nbytes, runts, oversize, nruns, error)
 * arena: writable buffer; each emitted frame is copied there with its virtio header in front.
 * meta: writable int64 buffer, 2 per frame: arena offset of the frame (after the header), frame length.
 * runs: writable int64 buffer, 4 per run: first frame, frame count, kind (0 plain, 1 offload header), bytes.
 *   A plain run is a maximal sequence of plain frames with the same 12 bytes of MAC addresses (one switch
 *   decision serves it); each frame with an offload request (NEEDS_CSUM or a GSO type) is a run of its own.
 * On error (a message), nothing is consumed and the used ring is untouched. */
static PyObject *tx_pull(PyObject *mod, PyObject *args) {
    PyObject *memo, *desco, *availo, *usedo, *arenao, *metao, *runso;
    unsigned int num, last_avail, used_idx, budget, hdr_len;
    int event_idx, indirect;
    if (!PyArg_ParseTuple(args, "OOOOIIIppIIOOO", &memo, &desco, &availo, &usedo, &num, &last_avail, &used_idx,
                          &event_idx, &indirect, &budget, &hdr_len, &arenao, &metao, &runso))
        return NULL;
    MemoryObject *m = get_mem(memo);
    if (m == NULL)
        return NULL;
    struct ring r;
    Py_buffer arena, meta, runs;
    PyObject *result = NULL;
    if (get_ring(&r, desco, availo, usedo, num) < 0) {
        put_ring(&r);
        return NULL;
    }
    if (PyObject_GetBuffer(arenao, &arena, PyBUF_WRITABLE) < 0) {
        put_ring(&r);
        return NULL;
    }
    if (PyObject_GetBuffer(metao, &meta, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&arena);
        put_ring(&r);
        return NULL;
    }
    if (PyObject_GetBuffer(runso, &runs, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&meta);
        PyBuffer_Release(&arena);
        put_ring(&r);
        return NULL;
    }
    char err[ERRLEN];
    err[0] = 0;
    size_t max_frames = (size_t)meta.len / 16;
    if ((size_t)runs.len / 32 < max_frames)
        max_frames = (size_t)runs.len / 32;
    if (budget > max_frames)
        budget = (unsigned int)max_frames;
    if (hdr_len > 12 || (size_t)arena.len < hdr_len + MAX_FRAME) {
        PyErr_SetString(PyExc_ValueError, "bad hdr_len or arena smaller than one frame");
        goto out;
    }
    uint16_t last = (uint16_t)last_avail, used = (uint16_t)used_idx;
    uint32_t n = (uint16_t)(avail_idx(&r) - last);
    barrier();
    if (n > num) {
        snprintf(err, ERRLEN, "avail idx moved %u entries past last_avail %u; ring has %u", n, last, num);
        goto done;
    }
    if (n > budget)
        n = budget;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t h = avail_head(&r, last + i);
        if (h >= num) {
            snprintf(err, ERRLEN, "avail ring names descriptor %u, ring has %u", h, num);
            goto done;
        }
    }
    int64_t *mt = meta.buf, *rn = runs.buf;
    uint8_t *ar = arena.buf;
    size_t apos = 0;
    uint32_t consumed = 0, frames = 0, runts = 0, oversize = 0, nruns = 0;
    uint64_t nbytes = 0;
    int64_t run_kind = -1;
    uint8_t *prev = NULL;
    for (; consumed < n; consumed++) {
        uint32_t head = avail_head(&r, last + consumed);
        if (head >= num) { /* the guest changed the slot since the check above */
            snprintf(err, ERRLEN, "avail ring names descriptor %u, ring has %u", head, num);
            goto done;
        }
        heads[consumed] = (uint16_t)head;
        struct desc d;
        read_desc(r.desc.buf, head, &d);
        int nseg;
        uint64_t total;
        if (!(d.flags & (F_NEXT | F_INDIRECT))) { /* lone descriptor (Vring.lone_views) */
            if (d.flags & F_WRITE) {
                snprintf(err, ERRLEN, "tx descriptor chain %u has a device-writable buffer", head);
                goto done;
            }
            uint8_t *p = xlate(m, d.addr, d.len);
            if (p == NULL) {
                snprintf(err, ERRLEN, "descriptor %u: guest address 0x%llx+%u is outside the mapped memory", head,
                         (unsigned long long)d.addr, d.len);
                goto done;
            }
            scratch[0].p = p;
            scratch[0].len = d.len;
            nseg = 1;
            total = d.len;
        } else {
            int any_write;
            nseg = walk_chain(m, &r, head, indirect, &total, &any_write, err);
            if (nseg < 0)
                goto done;
            if (any_write) {
                snprintf(err, ERRLEN, "tx descriptor chain %u has a device-writable buffer", head);
                goto done;
            }
        }
        if (total < hdr_len + MIN_FRAME) {
            runts++;
            continue;
        }
        if (total - hdr_len > MAX_FRAME) {
            oversize++;
            continue;
        }
        if (apos + total > (size_t)arena.len)
            break; /* arena full: the rest waits for the next batch */
        uint8_t *dst = ar + apos;
        for (int s = 0; s < nseg; s++) {
            memcpy(dst, scratch[s].p, scratch[s].len);
            dst += scratch[s].len;
        }
        uint8_t *hdr = ar + apos;
        uint8_t *fr = hdr + hdr_len;
        uint32_t flen = (uint32_t)(total - hdr_len);
        int kind = (hdr[0] & NEEDS_CSUM) || hdr[1];
        mt[2 * frames] = (int64_t)(apos + hdr_len);
        mt[2 * frames + 1] = flen;
        if (kind == 0 && run_kind == 0 && memcmp(prev, fr, 12) == 0) {
            rn[4 * (nruns - 1) + 1] += 1;
            rn[4 * (nruns - 1) + 3] += flen;
        } else {
            rn[4 * nruns] = frames;
            rn[4 * nruns + 1] = 1;
            rn[4 * nruns + 2] = kind;
            rn[4 * nruns + 3] = flen;
            nruns++;
        }
        run_kind = kind;
        prev = fr;
        frames++;
        nbytes += flen;
        apos += total;
        apos = (apos + 7) & ~(size_t)7;
        if (apos > (size_t)arena.len)
            apos = arena.len;
    }
    /* all checked: the batch is taken */
    for (uint32_t i = 0; i < consumed; i++) {
        put_used(&r, used, heads[i], 0);
        used++;
    }
    last += consumed;
    if (consumed)
        publish(&r, used, last, event_idx);
    else if (event_idx) /* nothing taken: only ask for a kick (Vring.request_kicks) */
        store16((uint8_t *)r.used.buf + 4 + 8 * r.num, last);
    result = Py_BuildValue("IIKIIIO", consumed, frames, (unsigned long long)nbytes, runts, oversize, nruns, Py_None);
    goto out;
done:
    result = Py_BuildValue("IIKIIIs", 0, 0, 0ULL, 0, 0, 0, err);
out:
    PyBuffer_Release(&runs);
    PyBuffer_Release(&meta);
    PyBuffer_Release(&arena);
    put_ring(&r);
    return result;
}

/* rx_push(mem, desc, avail, used, num, last_avail, used_idx, event_idx, mrg, hdr_len, src, meta, start, end, hdr
 *         [, stop])
 * Frames meta[start:end] (int64 pairs: offset in src, length) into the ring, each with the 12-byte header
 * template `hdr` (num_buffers filled in) cut to hdr_len.
 * -> (next, last_avail, used_idx, frames, nbytes, no_buffers, too_small, code, error)
 * code 0: all done; 1: frame `next` needs the Python path (a chained or indirect rx buffer); 2: ring error
 * (message) at frame `next`; 3 (only with the optional `stop` true: flow control): frame `next` found no rx
 * buffers (counted in no_buffers), nothing of it was written and nothing after it was tried (it and the rest
 * are held by the caller, in order). Frames before `next` are delivered and published in every case. */
static PyObject *rx_push(PyObject *mod, PyObject *args) {
    PyObject *memo, *desco, *availo, *usedo, *srco, *metao;
    unsigned int num, last_avail, used_idx, hdr_len;
    int event_idx, mrg, stop = 0;
    Py_ssize_t start, end;
    const char *hdrt;
    Py_ssize_t hdrt_len;
    if (!PyArg_ParseTuple(args, "OOOOIIIppIOOnny#|p", &memo, &desco, &availo, &usedo, &num, &last_avail, &used_idx,
                          &event_idx, &mrg, &hdr_len, &srco, &metao, &start, &end, &hdrt, &hdrt_len, &stop))
        return NULL;
    MemoryObject *m = get_mem(memo);
    if (m == NULL)
        return NULL;
    if (hdrt_len != 12 || hdr_len > 12) {
        PyErr_SetString(PyExc_ValueError, "header template must be 12 bytes");
        return NULL;
    }
    struct ring r;
    Py_buffer src, meta;
    PyObject *result = NULL;
    if (get_ring(&r, desco, availo, usedo, num) < 0) {
        put_ring(&r);
        return NULL;
    }
    if (PyObject_GetBuffer(srco, &src, PyBUF_SIMPLE) < 0) {
        put_ring(&r);
        return NULL;
    }
    if (PyObject_GetBuffer(metao, &meta, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&src);
        put_ring(&r);
        return NULL;
    }
    if (start < 0 || end < start || (size_t)end > (size_t)meta.len / 16) {
        PyErr_SetString(PyExc_ValueError, "frame range outside meta");
        goto out;
    }
    const int64_t *mt = meta.buf;
    for (Py_ssize_t i = start; i < end; i++) { /* our own data, but a bad offset must not read outside src */
        if (mt[2 * i] < 0 || mt[2 * i + 1] < 0 || mt[2 * i] + mt[2 * i + 1] > src.len) {
            PyErr_SetString(PyExc_ValueError, "frame outside the source buffer");
            goto out;
        }
    }
    char err[ERRLEN];
    err[0] = 0;
    uint16_t last = (uint16_t)last_avail, used = (uint16_t)used_idx;
    uint32_t frames = 0, nobuf = 0, small = 0;
    uint64_t nbytes = 0;
    int code = 0;
    uint8_t hdr[12];
    memcpy(hdr, hdrt, 12);
    Py_ssize_t i = start;
    for (; i < end; i++) {
        const uint8_t *f = (const uint8_t *)src.buf + mt[2 * i];
        uint32_t flen = (uint32_t)mt[2 * i + 1];
        uint64_t need = (uint64_t)hdr_len + flen;
        uint32_t avail = (uint16_t)(avail_idx(&r) - last);
        barrier();
        if (avail == 0) {
            nobuf++;
            if (stop) {
                code = 3;
                break;
            }
            continue;
        }
        if (avail > num) {
            snprintf(err, ERRLEN, "avail idx moved %u entries past last_avail %u; ring has %u", avail, last, num);
            code = 2;
            break;
        }
        uint32_t head = avail_head(&r, last);
        if (head >= num) {
            snprintf(err, ERRLEN, "avail ring names descriptor %u, ring has %u", head, num);
            code = 2;
            break;
        }
        struct desc d;
        read_desc(r.desc.buf, head, &d);
        if (d.flags & (F_NEXT | F_INDIRECT)) {
            code = 1;
            break;
        }
        if (!(d.flags & F_WRITE)) {
            snprintf(err, ERRLEN, "rx descriptor chain %u has a device-read-only buffer", head);
            code = 2;
            break;
        }
        uint8_t *p = xlate(m, d.addr, d.len);
        if (p == NULL) {
            snprintf(err, ERRLEN, "descriptor %u: guest address 0x%llx+%u is outside the mapped memory", head,
                     (unsigned long long)d.addr, d.len);
            code = 2;
            break;
        }
        if (d.len >= need) { /* the common case: header and frame in one buffer */
            hdr[10] = 1;
            hdr[11] = 0;
            memcpy(p, hdr, hdr_len);
            memcpy(p + hdr_len, f, flen);
            put_used(&r, used, head, (uint32_t)need);
            used++;
            last++;
            frames++;
            nbytes += flen;
            continue;
        }
        if (!mrg) {
            small++;
            continue;
        }
        /* MRG_RXBUF: lone device-writable buffers until the frame fits (Vring.gather); a zero-length one is
           a ring error (a ring full of them made every frame scan the whole avail ring in vain) */
        if (d.len == 0) {
            snprintf(err, ERRLEN, "rx descriptor %u is a zero-length buffer", head);
            code = 2;
            break;
        }
        uint64_t capacity = d.len;
        uint32_t k = 1;
        scratch[0].p = p;
        scratch[0].len = d.len;
        heads[0] = (uint16_t)head;
        int slow = 0;
        while (capacity < need && k < avail) {
            uint32_t h = avail_head(&r, last + k);
            if (h >= num) {
                snprintf(err, ERRLEN, "avail ring names descriptor %u, ring has %u", h, num);
                code = 2;
                break;
            }
            read_desc(r.desc.buf, h, &d);
            if (d.flags & (F_NEXT | F_INDIRECT)) {
                slow = 1;
                break;
            }
            if (!(d.flags & F_WRITE)) {
                snprintf(err, ERRLEN, "rx descriptor chain %u has a device-read-only buffer", h);
                code = 2;
                break;
            }
            if (d.len == 0) {
                snprintf(err, ERRLEN, "rx descriptor %u is a zero-length buffer", h);
                code = 2;
                break;
            }
            uint8_t *q = xlate(m, d.addr, d.len);
            if (q == NULL) {
                snprintf(err, ERRLEN, "descriptor %u: guest address 0x%llx+%u is outside the mapped memory", h,
                         (unsigned long long)d.addr, d.len);
                code = 2;
                break;
            }
            scratch[k].p = q;
            scratch[k].len = d.len;
            heads[k] = (uint16_t)h;
            capacity += d.len;
            k++;
        }
        if (code)
            break;
        if (slow) {
            code = 1;
            break;
        }
        if (capacity < need) {
            nobuf++;
            if (stop) {
                code = 3;
                break;
            }
            continue;
        }
        if (scratch[0].len < hdr_len) {
            small++;
            continue;
        }
        hdr[10] = (uint8_t)(k & 0xFF);
        hdr[11] = (uint8_t)(k >> 8);
        memcpy(scratch[0].p, hdr, hdr_len);
        uint32_t off = hdr_len, pos = 0;
        for (uint32_t b = 0; b < k; b++) {
            uint32_t take = scratch[b].len - off;
            if (take > flen - pos)
                take = flen - pos;
            memcpy(scratch[b].p + off, f + pos, take);
            pos += take;
            put_used(&r, used, heads[b], off + take);
            used++;
            off = 0;
        }
        last += k;
        frames++;
        nbytes += flen;
    }
    if (frames)
        publish(&r, used, last, event_idx);
    result = Py_BuildValue("nIIIKIIiN", i, (unsigned int)last, (unsigned int)used, frames, (unsigned long long)nbytes,
                           nobuf, small, code, code == 2 ? PyUnicode_FromString(err) : Py_NewRef(Py_None));
out:
    PyBuffer_Release(&meta);
    PyBuffer_Release(&src);
    put_ring(&r);
    return result;
}

/* ---- the SIGBUS guard -----------------------------------------------------------------------------------------
 * A front-end that shrinks (ftruncates) its unsealed guest-memory file after SET_MEM_TABLE makes the next access
 * to the lost pages raise SIGBUS, which kills the process. QEMU's memory-backend-memfd seals its memfd
 * (F_SEAL_SHRINK) but memory-backend-file, DPDK's --no-huge memfd and vhea's own front-end do not, so refusing
 * unsealed memory would refuse real front-ends. Instead, unsealed regions are registered here: a SIGBUS inside
 * one replaces the whole mapping with anonymous zero pages (the faulting access then completes, reading zeros)
 * and marks the region hit; the server closes that port. A SIGBUS anywhere else goes to the previous handler.
 */
#define GUARD_SLOTS 256

struct guard_slot {
    uintptr_t start, end;
    volatile sig_atomic_t used, hit;
};

static struct guard_slot guards[GUARD_SLOTS];
static volatile sig_atomic_t guard_hit_count;
static struct sigaction guard_previous;
static int guard_installed;

static void guard_on_sigbus(int sig, siginfo_t *info, void *ctx) {
    uintptr_t a = (uintptr_t)info->si_addr;
    for (int i = 0; i < GUARD_SLOTS; i++) {
        if (guards[i].used && guards[i].start <= a && a < guards[i].end) {
            void *p = mmap((void *)guards[i].start, guards[i].end - guards[i].start, PROT_READ | PROT_WRITE,
                           MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p != MAP_FAILED) {
                guards[i].hit = 1;
                guard_hit_count++;
                return; /* the access is retried on the zero pages */
            }
            break;
        }
    }
    /* not ours: the previous disposition takes the retried access */
    sigaction(SIGBUS, &guard_previous, NULL);
    (void)sig;
    (void)ctx;
}

static PyObject *guard_add(PyObject *mod, PyObject *args) {
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "O", &obj))
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(obj, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    uintptr_t start = (uintptr_t)b.buf, end = start + (uintptr_t)b.len;
    PyBuffer_Release(&b);
    if (!guard_installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = guard_on_sigbus;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGBUS, &sa, &guard_previous) < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        guard_installed = 1;
    }
    for (int i = 0; i < GUARD_SLOTS; i++) {
        if (!guards[i].used) {
            guards[i].start = start;
            guards[i].end = end;
            guards[i].hit = 0;
            guards[i].used = 1;
            return PyLong_FromLong(i);
        }
    }
    PyErr_SetString(PyExc_RuntimeError, "no free SIGBUS guard slot");
    return NULL;
}

static PyObject *guard_remove(PyObject *mod, PyObject *args) {
    int i;
    if (!PyArg_ParseTuple(args, "i", &i))
        return NULL;
    if (i >= 0 && i < GUARD_SLOTS)
        guards[i].used = 0;
    Py_RETURN_NONE;
}

static PyObject *guard_was_hit(PyObject *mod, PyObject *args) {
    int i;
    if (!PyArg_ParseTuple(args, "i", &i))
        return NULL;
    return PyBool_FromLong(i >= 0 && i < GUARD_SLOTS && guards[i].used && guards[i].hit);
}

static PyObject *guard_hits(PyObject *mod, PyObject *noargs) {
    return PyLong_FromLong((long)guard_hit_count);
}

static PyMethodDef methods[] = {
    {"tx_pull", tx_pull, METH_VARARGS, "take a batch of tx chains into an arena (see the source)"},
    {"rx_push", rx_push, METH_VARARGS, "write a batch of frames into an rx ring (see the source)"},
    {"guard_add", guard_add, METH_VARARGS, "guard a mapping (a buffer) against SIGBUS; returns its slot"},
    {"guard_remove", guard_remove, METH_VARARGS, "stop guarding a slot (before the mapping goes)"},
    {"guard_was_hit", guard_was_hit, METH_VARARGS, "whether a SIGBUS hit this slot's mapping"},
    {"guard_hits", guard_hits, METH_NOARGS, "SIGBUS hits in guarded mappings so far"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_datapath", "vhea native datapath", -1, methods};

PyMODINIT_FUNC PyInit__datapath(void) {
    if (PyType_Ready(&MemoryType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&MemoryType);
    if (PyModule_AddObject(m, "Memory", (PyObject *)&MemoryType) < 0) {
        Py_DECREF(&MemoryType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "MAX_FRAME", MAX_FRAME);
    PyModule_AddIntConstant(m, "ABI", 2);
    return m;
}

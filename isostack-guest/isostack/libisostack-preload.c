/* libisostack-preload.so: unmodified, dynamically linked programs over IsoStack (LD_PRELOAD; isostack-run).
 *
 * It interposes the socket calls (dlsym RTLD_NEXT for the real ones) and serves TCP over IPv4 and IPv6 from
 * isostackd through the queue ABI of docs/queue-abi.md (isostack_abi.h), attaching exactly as the Python
 * front-end does.  Everything else (UDP, Unix sockets, files, pipes) goes to libc untouched: a call on an fd
 * the shim does not own costs a bounds check and one load.  docs/preload.md lists every call and its
 * behaviour; what cannot be done honestly fails with the errno a program expects.
 *
 * An IsoStack socket is an eventfd to the program: a real fd number (so select/poll/epoll sets, dup and
 * close work on it), registered with isostackd as the socket's readiness fd.  A private duplicate above the
 * program's fds is what the shim waits on, so a close racing a blocked call never leaves it polling a
 * reused number.
 *
 * Longer than the project's ~500-line guide: one shared object is what LD_PRELOAD loads, and the guests have
 * no compiler, so it is one source file next to its ABI header.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "isostack_abi.h"

#define FD_MAX 65536
#define PRIVATE_FD_MIN 512          /* private eventfd duplicates go above the program's usual fds */
#define SLICE_MS 20                 /* longest single sleep of a wait: a lost wake-up costs at most this */
#define CONTROL_TIMEOUT_NS 10000000000LL /* a non-blocking socket's wait for a control command's result */
#define DEFAULT_SOCKET "/run/isostack/isostackd.sock"

/* ------------------------------------------------------------------ the real functions */

#define REAL(ret, name, ...)                                                                                       \
    static ret (*real_##name)(__VA_ARGS__);
REAL(int, socket, int, int, int)
REAL(int, connect, int, const struct sockaddr *, socklen_t)
REAL(int, bind, int, const struct sockaddr *, socklen_t)
REAL(int, listen, int, int)
REAL(int, accept, int, struct sockaddr *, socklen_t *)
REAL(int, accept4, int, struct sockaddr *, socklen_t *, int)
REAL(int, close, int)
REAL(int, shutdown, int, int)
REAL(ssize_t, read, int, void *, size_t)
REAL(ssize_t, write, int, const void *, size_t)
REAL(ssize_t, readv, int, const struct iovec *, int)
REAL(ssize_t, writev, int, const struct iovec *, int)
REAL(ssize_t, send, int, const void *, size_t, int)
REAL(ssize_t, sendto, int, const void *, size_t, int, const struct sockaddr *, socklen_t)
REAL(ssize_t, sendmsg, int, const struct msghdr *, int)
REAL(ssize_t, recv, int, void *, size_t, int)
REAL(ssize_t, recvfrom, int, void *, size_t, int, struct sockaddr *, socklen_t *)
REAL(ssize_t, recvmsg, int, struct msghdr *, int)
REAL(int, setsockopt, int, int, int, const void *, socklen_t)
REAL(int, getsockopt, int, int, int, void *, socklen_t *)
REAL(int, getsockname, int, struct sockaddr *, socklen_t *)
REAL(int, getpeername, int, struct sockaddr *, socklen_t *)
REAL(int, fcntl, int, int, ...)
REAL(int, fcntl64, int, int, ...)
REAL(int, ioctl, int, unsigned long, ...)
REAL(int, poll, struct pollfd *, nfds_t, int)
REAL(int, ppoll, struct pollfd *, nfds_t, const struct timespec *, const sigset_t *)
REAL(int, select, int, fd_set *, fd_set *, fd_set *, struct timeval *)
REAL(int, dup, int)
REAL(int, dup2, int, int)
REAL(int, dup3, int, int, int)
REAL(int, epoll_ctl, int, int, int, struct epoll_event *)
REAL(int, epoll_wait, int, struct epoll_event *, int, int)
REAL(int, epoll_pwait, int, struct epoll_event *, int, int, const sigset_t *)

static inline void *resolved(void **slot, const char *name)
{
    void *p = __atomic_load_n(slot, __ATOMIC_RELAXED);
    if (!p) {
        p = dlsym(RTLD_NEXT, name);
        __atomic_store_n(slot, p, __ATOMIC_RELAXED);
    }
    return p;
}
#define R(name) ((__typeof__(real_##name))resolved((void **)&real_##name, #name))

__attribute__((constructor)) static void resolve_all(void)
{
    (void)R(socket), (void)R(connect), (void)R(bind), (void)R(listen), (void)R(accept), (void)R(accept4);
    (void)R(close), (void)R(shutdown), (void)R(read), (void)R(write), (void)R(readv), (void)R(writev);
    (void)R(send), (void)R(sendto), (void)R(sendmsg), (void)R(recv), (void)R(recvfrom), (void)R(recvmsg);
    (void)R(setsockopt), (void)R(getsockopt), (void)R(getsockname), (void)R(getpeername), (void)R(fcntl);
    (void)R(fcntl64), (void)R(ioctl), (void)R(poll), (void)R(ppoll), (void)R(select), (void)R(dup), (void)R(dup2);
    (void)R(dup3), (void)R(epoll_ctl), (void)R(epoll_wait), (void)R(epoll_pwait);
}

/* ------------------------------------------------------------------ state */

struct isock {
    int slot, family, refs;
    int priv;                    /* private eventfd duplicate: what the shim waits on */
    uint64_t *ctl;               /* control page */
    unsigned char *txr, *rxr;
    uint64_t txsize, rxsize, tx_tail, rx_head;
    pthread_mutex_t ctl_lock, tx_lock, rx_lock;
    int nonblock, watched, tx_armed, tx_shut, rd_shut, foreign;
    int64_t connect_pos;         /* a non-blocking CONNECT whose result is not read yet, else -1 */
    int pending_error;           /* that CONNECT's error, read by a later command first: for SO_ERROR */
    int connect_unreported;      /* it succeeded and connect() was not called since: the next one returns 0 */
    long long rcvtimeo_ns, sndtimeo_ns; /* SO_RCVTIMEO / SO_SNDTIMEO, 0: none */
};

enum { SLOT_FREE, SLOT_USED, SLOT_CLOSING };

static struct {
    int attached, failed, gone; /* gone: isostackd closed the attach connection (it died or was stopped) */
    struct iso_geometry g;
    unsigned char *base;
    uint64_t *words;
    int conn, kick, doorbell, asym;
    pid_t pid;
    unsigned char *slot_state;
    uint64_t *close_pos;
    char path[108];
    char error[256];
} app = {.conn = -1, .kick = -1, .doorbell = -1};

static pthread_mutex_t app_lock = PTHREAD_MUTEX_INITIALIZER; /* attach, slots, watch messages */
static pthread_mutex_t tab_lock = PTHREAD_MUTEX_INITIALIZER; /* the fd table */
static struct isock *fds[FD_MAX];
static unsigned char fd_cloexec[FD_MAX]; /* what the program asked for (the real fd is always close-on-exec) */
static long long spin_ns = 50000;

struct ep_item {
    int fd;
    struct isock *s;
    struct epoll_event ev;
    int disabled;
    struct ep_item *next;
};
static struct ep_item *ep_lists[FD_MAX]; /* per epoll fd: its IsoStack members (the kernel has the others) */
static int ep_count;

static inline uint64_t ld(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void st(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int set_errno(int e)
{
    errno = e;
    return -1;
}

/* ------------------------------------------------------------------ the fd table */

static struct isock *lookup(int fd)
{
    if ((unsigned)fd >= FD_MAX || !__atomic_load_n(&fds[fd], __ATOMIC_RELAXED))
        return NULL;
    pthread_mutex_lock(&tab_lock);
    struct isock *s = fds[fd];
    if (s)
        s->refs++;
    pthread_mutex_unlock(&tab_lock);
    return s;
}

static void final_close(struct isock *s);

static void put(struct isock *s)
{
    pthread_mutex_lock(&tab_lock);
    int last = --s->refs == 0;
    pthread_mutex_unlock(&tab_lock);
    if (last)
        final_close(s);
}

/* ------------------------------------------------------------------ attach (attach.py's handshake) */

static uint64_t env_u64(const char *name, uint64_t dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 0) : dflt;
}

static int attach_locked(void)
{
    if (app.attached)
        return 0;
    const char *path = getenv("ISOSTACK_SOCKET");
    snprintf(app.path, sizeof app.path, "%s", path && *path ? path : DEFAULT_SOCKET);
    struct iso_geometry g = {env_u64("ISOSTACK_MAX_SOCKETS", 64), 64, env_u64("ISOSTACK_TX_SIZE", 1 << 18),
                             env_u64("ISOSTACK_RX_SIZE", 1 << 18), 1024, 1};
    int err = 0, memfd = -1;
    const char *what = "geometry";
    if (iso_geometry_check(&g)) {
        err = EINVAL;
        goto fail;
    }
    uint64_t size = iso_total_size(&g);
    what = "shared memory";
    memfd = (int)syscall(SYS_memfd_create, "isostack", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (memfd < 0 || ftruncate(memfd, (off_t)size) ||
        R(fcntl)(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL)) {
        err = errno;
        goto fail;
    }
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (base == MAP_FAILED) {
        err = errno;
        goto fail;
    }
    app.base = base;
    app.words = base;
    app.g = g;
    app.words[ISO_H_MAGIC] = ISO_MAGIC;
    app.words[ISO_H_VERSION] = ISO_VERSION;
    for (uint64_t i = 0; i < g.max_sockets; i++) {
        uint64_t *slots = (uint64_t *)(app.base + iso_cmdq_off(&g, i));
        for (uint64_t k = 0; k < g.cmdq_slots; k++)
            slots[k * 8] = k;
    }
    app.doorbell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC | EFD_SEMAPHORE);
    app.conn = R(socket)(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    what = "attach socket";
    if (app.doorbell < 0 || app.conn < 0) {
        err = errno;
        goto fail;
    }
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", app.path);
    if (R(connect)(app.conn, (struct sockaddr *)&sun, sizeof sun)) {
        err = errno;
        goto fail;
    }
    struct timeval tv = {5, 0};
    R(setsockopt)(app.conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char hello[1024], name[32];
    snprintf(name, sizeof name, "pid%ld", (long)getpid());
    int len = iso_encode_hello(hello, sizeof hello, &g, (long)getpid(), name);
    int sendfds[2] = {memfd, app.doorbell};
    union {
        char buf[CMSG_SPACE(sizeof(int) * 2)];
        struct cmsghdr align;
    } cbuf;
    struct iovec iov = {hello, (size_t)len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.buf, .msg_controllen = sizeof cbuf.buf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof sendfds);
    memcpy(CMSG_DATA(cm), sendfds, sizeof sendfds);
    what = "attach request";
    if (R(sendmsg)(app.conn, &msg, MSG_NOSIGNAL) != len) {
        err = errno ? errno : EPROTO;
        goto fail;
    }
    char reply[4097];
    iov = (struct iovec){reply, sizeof reply - 1};
    msg = (struct msghdr){.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.buf, .msg_controllen = sizeof cbuf.buf};
    ssize_t n = R(recvmsg)(app.conn, &msg, MSG_CMSG_CLOEXEC);
    what = "attach reply";
    if (n <= 0) {
        err = n < 0 ? errno : ECONNRESET;
        goto fail;
    }
    reply[n] = 0;
    for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            int got[2], k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            memcpy(got, CMSG_DATA(cm), sizeof(int) * (k > 2 ? 2 : k));
            for (int i = 0; i < k && i < 2; i++) {
                if (app.kick < 0)
                    app.kick = got[i];
                else
                    R(close)(got[i]);
            }
        }
    char type[32] = "";
    iso_json_string(reply, "type", type, sizeof type);
    if (strcmp(type, "attached") || app.kick < 0) {
        char message[200] = "no kick eventfd";
        iso_json_string(reply, "message", message, sizeof message);
        snprintf(app.error, sizeof app.error, "isostackd refused the attachment: %s", message);
        err = ECONNREFUSED;
        goto fail_quiet;
    }
    app.asym = iso_json_int(reply, "membarrier") &&
               syscall(SYS_membarrier, 1 << 2 /* REGISTER_GLOBAL_EXPEDITED */, 0, 0) == 0;
    R(close)(memfd);
    app.slot_state = calloc(g.max_sockets, 1);
    app.close_pos = calloc(g.max_sockets, sizeof(uint64_t));
    app.pid = getpid();
    app.attached = 1;
    spin_ns = (long long)env_u64("ISOSTACK_SPIN_US", 50) * 1000;
    return 0;
fail:
    snprintf(app.error, sizeof app.error, "cannot attach to isostackd at %s (%s): %s", app.path, what, strerror(err));
fail_quiet:
    if (memfd >= 0)
        R(close)(memfd);
    if (app.conn >= 0)
        R(close)(app.conn);
    if (app.doorbell >= 0)
        R(close)(app.doorbell);
    if (app.kick >= 0)
        R(close)(app.kick);
    if (app.base)
        munmap(app.base, iso_total_size(&app.g));
    app.base = NULL;
    app.conn = app.doorbell = app.kick = -1;
    if (!app.failed) { /* said once; every socket() tries again (isostackd may start later) */
        char line[400];
        int k = snprintf(line, sizeof line, "libisostack-preload: %s\n", app.error);
        if (k > 0 && R(write)(2, line, (size_t)(k < (int)sizeof line ? k : (int)sizeof line - 1)) < 0) {
        }
    }
    app.failed = 1;
    return set_errno(err == EINVAL ? EINVAL : ENETDOWN); /* the IsoStack network is not there */
}

/* A forked child shares the parent's memory but not its sockets (docs/preload.md): it attaches on its own. */
static void after_fork_child(void)
{
    pthread_mutex_init(&app_lock, NULL);
    pthread_mutex_init(&tab_lock, NULL);
    for (int fd = 0; fd < FD_MAX; fd++)
        if (fds[fd])
            fds[fd]->foreign = 1;
    if (app.conn >= 0)
        R(close)(app.conn);
    memset(&app, 0, sizeof app);
    app.conn = app.kick = app.doorbell = -1;
}

__attribute__((constructor)) static void install_fork_handler(void) { pthread_atfork(NULL, NULL, after_fork_child); }

/* ------------------------------------------------------------------ commands */

static void kick_if_sleeping(int slot)
{
    __atomic_fetch_or(&app.words[ISO_H_PENDING + (slot >> 6)], 1ull << (slot & 63), __ATOMIC_SEQ_CST);
    if (ld(&app.words[ISO_H_DISP_SLEEPING])) {
        __atomic_fetch_add(&app.words[ISO_H_KICKS], 1, __ATOMIC_RELAXED);
        uint64_t one = 1;
        if (R(write)(app.kick, &one, 8) < 0) {
        }
    }
}

/* Post a command; its position, or -errno (queue full for 5 s: the dispatcher is gone). */
static int64_t post(struct isock *s, uint16_t op, uint64_t a, uint64_t b, uint64_t c, const unsigned char *ip)
{
    struct iso_command cmd = {op, 0, (uint32_t)s->slot, a, b, c, {0}};
    if (ip)
        memcpy(cmd.ip, ip, 16);
    unsigned char body[ISO_BODY_SIZE];
    iso_encode_body(body, &cmd);
    uint64_t *tail = &s->ctl[ISO_C_CMD_TAIL];
    unsigned char *slots = (unsigned char *)s->ctl + ISO_CONTROL_SIZE;
    int64_t pos = iso_abi_push(tail, slots, app.g.cmdq_slots, body);
    long long deadline = now_ns() + 5000000000LL;
    while (pos == -1 && now_ns() < deadline) {
        usleep(100);
        pos = iso_abi_push(tail, slots, app.g.cmdq_slots, body);
    }
    if (pos < 0)
        return pos == -1 ? -EAGAIN : -EPROTO;
    kick_if_sleeping(s->slot);
    return pos;
}

/* Register the private eventfd as the socket's readiness fd (once per socket). */
static int ensure_watch(struct isock *s)
{
    if (__atomic_load_n(&s->watched, __ATOMIC_ACQUIRE))
        return 0;
    pthread_mutex_lock(&app_lock);
    int rc = 0;
    if (!s->watched) {
        char msg[64];
        int len = snprintf(msg, sizeof msg, "{\"type\": \"watch\", \"sock\": %d}", s->slot);
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } cbuf;
        struct iovec iov = {msg, (size_t)len};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.buf, .msg_controllen = sizeof cbuf.buf};
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &s->priv, sizeof(int));
        char reply[512];
        ssize_t n = -1;
        if (R(sendmsg)(app.conn, &m, MSG_NOSIGNAL) == len)
            n = R(recv)(app.conn, reply, sizeof reply - 1, 0);
        char type[32] = "";
        if (n > 0) {
            reply[n] = 0;
            iso_json_string(reply, "type", type, sizeof type);
        }
        if (!strcmp(type, "watching"))
            __atomic_store_n(&s->watched, 1, __ATOMIC_RELEASE);
        else
            rc = -1;
    }
    pthread_mutex_unlock(&app_lock);
    return rc;
}

/* Whether isostackd closed our attach connection (checked once per sleep slice by the waits). */
static int dispatcher_gone(void)
{
    if (!app.gone && app.attached) {
        struct pollfd p = {app.conn, 0, 0};
        if (R(poll)(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR)))
            __atomic_store_n(&app.gone, 1, __ATOMIC_RELAXED);
    }
    return app.gone;
}

typedef int (*cond_fn)(struct isock *, uint64_t);

/* Wait until cond(s, arg), the deadline (ns, 0: none; returns -ETIMEDOUT) or a shutdown(SHUT_RD) wakes us.
 * Spin first, then sleep on the readiness eventfd after arming it (docs/queue-abi.md: no wake-up is lost). */
static int wait_for(struct isock *s, cond_fn cond, uint64_t arg, long long deadline)
{
    long long t0 = now_ns(), spin_end = t0 + spin_ns;
    while (now_ns() < spin_end) {
        if (cond(s, arg))
            return 0;
        sched_yield();
    }
    int watched = ensure_watch(s) == 0;
    for (;;) {
        if (cond(s, arg))
            return 0;
        if (watched) {
            __atomic_exchange_n(&s->ctl[ISO_C_WATCH_ARMED], 1, __ATOMIC_SEQ_CST);
            uint64_t junk;
            if (R(read)(s->priv, &junk, 8) < 0) {
            }
            if (cond(s, arg))
                return 0;
        }
        int ms = watched ? SLICE_MS : 1;
        if (deadline) {
            long long left = deadline - now_ns();
            if (left <= 0)
                return -ETIMEDOUT;
            if (left / 1000000 < ms)
                ms = (int)(left / 1000000) + 1;
        }
        struct pollfd p[2] = {{s->priv, POLLIN, 0}, {app.conn, 0, 0}};
        R(poll)(p, 2, ms);
        if (p[1].revents & (POLLHUP | POLLERR)) /* isostackd is gone: nothing will ever complete */
            __atomic_store_n(&app.gone, 1, __ATOMIC_RELAXED);
        if (__atomic_load_n(&app.gone, __ATOMIC_RELAXED))
            return -ENETDOWN;
        /* the notification ring's entries are hints we do not use: keep it from counting drops */
        uint64_t *ring = &app.words[iso_ring_word(&app.g, 0)];
        st(&ring[ISO_R_HEAD], ld(&ring[ISO_R_TAIL]));
    }
}

static int done_cond(struct isock *s, uint64_t pos)
{
    return ld(&s->ctl[ISO_C_RES_SEQ]) > pos || (ld(&s->ctl[ISO_C_STATE]) & ISO_ST_ERROR);
}

/* The result of the command at pos once done: >= 0, or -errno. */
static int64_t result(struct isock *s, int64_t pos)
{
    if (ld(&s->ctl[ISO_C_RES_SEQ]) <= (uint64_t)pos) {
        uint64_t e = ld(&s->ctl[ISO_C_ERR]);
        return -(int64_t)(e ? e : EIO);
    }
    return (int64_t)ld(&s->ctl[ISO_C_RES_VAL]);
}

/* The non-blocking CONNECT's result once done (0 or errno), forgotten then; -1 while in progress. */
static int connect_outcome(struct isock *s, int block)
{
    int64_t pos = s->connect_pos;
    if (!done_cond(s, (uint64_t)pos)) {
        if (!block || wait_for(s, done_cond, (uint64_t)pos, now_ns() + CONTROL_TIMEOUT_NS))
            return -1;
    }
    s->connect_pos = -1;
    int64_t r = result(s, pos);
    s->connect_unreported = r >= 0;
    return r < 0 ? (int)-r : 0;
}

/* Post a command and wait for its result (a non-blocking socket waits up to 10 s, as the front-end); the
 * caller holds ctl_lock (the result words, OPTVAL and ADDR_* are per socket). */
static int64_t call_locked(struct isock *s, uint16_t op, uint64_t a, uint64_t b, uint64_t c, const unsigned char *ip)
{
    if (app.gone)
        return -ENETDOWN;
    if (s->connect_pos >= 0) { /* its result words are about to be reused: keep its error for SO_ERROR */
        int e = connect_outcome(s, 1);
        if (e > 0)
            s->pending_error = e;
    }
    int64_t pos = post(s, op, a, b, c, ip);
    int64_t r = pos;
    if (pos >= 0) {
        int w = wait_for(s, done_cond, (uint64_t)pos, s->nonblock ? now_ns() + CONTROL_TIMEOUT_NS : 0);
        r = w ? w : result(s, pos);
    }
    return r;
}

static int64_t call(struct isock *s, uint16_t op, uint64_t a, uint64_t b, uint64_t c, const unsigned char *ip)
{
    pthread_mutex_lock(&s->ctl_lock);
    int64_t r = call_locked(s, op, a, b, c, ip);
    pthread_mutex_unlock(&s->ctl_lock);
    return r;
}

/* ------------------------------------------------------------------ sockets: create, close */

static int alloc_slot_now(void);

/* A free slot; while none is free but CLOSEs are in flight, wait for them up to 2 s (as the front-end). Called
 * with app_lock held; drops it while waiting. */
static int alloc_slot(void)
{
    long long deadline = now_ns() + 2000000000LL;
    for (;;) {
        int slot = alloc_slot_now();
        if (slot >= 0)
            return slot;
        int closing = 0;
        for (uint64_t i = 0; i < app.g.max_sockets && !closing; i++)
            closing = app.slot_state[i] == SLOT_CLOSING;
        if (!closing || now_ns() > deadline)
            return -1;
        pthread_mutex_unlock(&app_lock);
        usleep(200);
        pthread_mutex_lock(&app_lock);
    }
}

static int alloc_slot_now(void)
{
    for (uint64_t i = 0; i < app.g.max_sockets; i++)
        if (app.slot_state[i] == SLOT_FREE) {
            app.slot_state[i] = SLOT_USED;
            return (int)i;
        }
    for (uint64_t i = 0; i < app.g.max_sockets; i++) {
        uint64_t *ctl = (uint64_t *)(app.base + iso_control_off(&app.g, i));
        if (app.slot_state[i] == SLOT_CLOSING && ld(&ctl[ISO_C_RES_SEQ]) > app.close_pos[i] &&
            (ld(&ctl[ISO_C_STATE]) & ISO_ST_CLOSED)) {
            app.slot_state[i] = SLOT_USED;
            return (int)i;
        }
    }
    return -1;
}

static struct isock *new_isock(int slot, int family, int nonblock)
{
    struct isock *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->slot = slot;
    s->family = family;
    s->ctl = (uint64_t *)(app.base + iso_control_off(&app.g, slot));
    s->txr = app.base + iso_tx_off(&app.g, slot);
    s->rxr = app.base + iso_rx_off(&app.g, slot);
    s->txsize = app.g.tx_size;
    s->rxsize = app.g.rx_size;
    s->tx_tail = ld(&s->ctl[ISO_C_TX_TAIL]);
    s->rx_head = ld(&s->ctl[ISO_C_RX_HEAD]);
    s->ctl[ISO_C_NOTIF_RING] = 0;
    s->connect_pos = -1;
    s->nonblock = nonblock;
    s->priv = -1;
    pthread_mutex_init(&s->ctl_lock, NULL);
    pthread_mutex_init(&s->tx_lock, NULL);
    pthread_mutex_init(&s->rx_lock, NULL);
    return s;
}

static void free_isock(struct isock *s)
{
    if (s->priv >= 0)
        R(close)(s->priv);
    free(s);
}

/* Give the socket the program's fd (an eventfd) and the private duplicate; the fd, or -errno. */
static int install(struct isock *s, int cloexec)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    s->priv = R(fcntl)(fd, F_DUPFD_CLOEXEC, PRIVATE_FD_MIN);
    if (s->priv < 0)
        s->priv = R(fcntl)(fd, F_DUPFD_CLOEXEC, 0);
    if (s->priv < 0 || fd >= FD_MAX) {
        int e = s->priv < 0 ? errno : EMFILE;
        R(close)(fd);
        return -e;
    }
    pthread_mutex_lock(&tab_lock);
    s->refs = 1;
    fds[fd] = s;
    fd_cloexec[fd] = (unsigned char)cloexec;
    pthread_mutex_unlock(&tab_lock);
    return fd;
}

#define CLOSE_DRAIN_NS 6000000000LL /* isostackd lingers 5 s on a close with queued bytes */

static int drained_cond(struct isock *s, uint64_t pos)
{
    return done_cond(s, pos) || ld(&s->ctl[ISO_C_TX_HEAD]) == s->tx_tail;
}

/* The last reference went: post CLOSE (queued tx bytes still go out) and let the slot be reused once done.
 * With bytes still in the tx ring it waits until isostackd handed them to the kernel: a program that writes,
 * closes and exits must not lose its last bytes (the kernel's close keeps them; our ring dies with us). */
static void final_close(struct isock *s)
{
    if (!s->foreign && app.attached) {
        int queued = ld(&s->ctl[ISO_C_TX_HEAD]) != s->tx_tail && !(ld(&s->ctl[ISO_C_STATE]) & ISO_ST_ERROR);
        int64_t pos = post(s, ISO_OP_CLOSE, 0, 0, 0, NULL);
        if (pos >= 0 && queued)
            wait_for(s, drained_cond, (uint64_t)pos, now_ns() + CLOSE_DRAIN_NS);
        pthread_mutex_lock(&app_lock);
        if (pos >= 0) {
            app.close_pos[s->slot] = (uint64_t)pos;
            app.slot_state[s->slot] = SLOT_CLOSING;
        } /* else the queue is dead: the slot stays used until the process detaches */
        pthread_mutex_unlock(&app_lock);
    }
    free_isock(s);
}

/* At exit, sockets never closed: their queued bytes reach the kernel before our memory goes (bounded). */
__attribute__((destructor)) static void drain_at_exit(void)
{
    if (!app.attached || app.pid != getpid())
        return;
    long long deadline = now_ns() + CLOSE_DRAIN_NS;
    for (int fd = 0; fd < FD_MAX; fd++) {
        struct isock *s = __atomic_load_n(&fds[fd], __ATOMIC_RELAXED);
        while (s && !s->foreign && ld(&s->ctl[ISO_C_TX_HEAD]) != s->tx_tail &&
               !(ld(&s->ctl[ISO_C_STATE]) & ISO_ST_ERROR) && now_ns() < deadline)
            usleep(200);
    }
}

/* Drop the program's fd `fd` from the table (and from the epoll sets that hold it). */
static struct isock *unmap_fd(int fd)
{
    pthread_mutex_lock(&tab_lock);
    struct isock *s = fds[fd];
    fds[fd] = NULL;
    if (s && ep_count)
        for (int e = 0; e < FD_MAX; e++) {
            struct ep_item **pp = &ep_lists[e];
            while (*pp) {
                if ((*pp)->fd == fd) {
                    struct ep_item *dead = *pp;
                    *pp = dead->next;
                    free(dead);
                    ep_count--;
                } else {
                    pp = &(*pp)->next;
                }
            }
        }
    pthread_mutex_unlock(&tab_lock);
    return s;
}

int socket(int domain, int type, int protocol)
{
    int base = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
    if ((domain != AF_INET && domain != AF_INET6) || base != SOCK_STREAM || (protocol && protocol != IPPROTO_TCP) ||
        getenv("ISOSTACK_PRELOAD_OFF"))
        return R(socket)(domain, type, protocol);
    pthread_mutex_lock(&app_lock);
    if (attach_locked()) {
        pthread_mutex_unlock(&app_lock);
        return -1;
    }
    int slot = alloc_slot();
    pthread_mutex_unlock(&app_lock);
    if (slot < 0)
        return set_errno(EMFILE);
    struct isock *s = new_isock(slot, domain, !!(type & SOCK_NONBLOCK));
    int fd = s ? install(s, !!(type & SOCK_CLOEXEC)) : -ENOMEM;
    if (fd < 0) {
        if (s)
            free_isock(s);
        pthread_mutex_lock(&app_lock);
        app.slot_state[slot] = SLOT_FREE;
        pthread_mutex_unlock(&app_lock);
        return set_errno(-fd);
    }
    int nb = s->nonblock;
    s->nonblock = 0; /* the SOCKET command itself is waited for */
    int64_t r = call(s, ISO_OP_SOCKET, (uint64_t)domain, SOCK_STREAM, 0, NULL);
    s->nonblock = nb;
    if (r < 0) {
        unmap_fd(fd);
        R(close)(fd);
        free_isock(s);
        pthread_mutex_lock(&app_lock);
        app.slot_state[slot] = SLOT_FREE;
        pthread_mutex_unlock(&app_lock);
        return set_errno((int)-r);
    }
    return fd;
}

int close(int fd)
{
    if ((unsigned)fd < FD_MAX && ep_lists[fd]) { /* an epoll fd with IsoStack members */
        pthread_mutex_lock(&tab_lock);
        while (ep_lists[fd]) {
            struct ep_item *dead = ep_lists[fd];
            ep_lists[fd] = dead->next;
            free(dead);
            ep_count--;
        }
        pthread_mutex_unlock(&tab_lock);
    }
    if ((unsigned)fd >= FD_MAX || !__atomic_load_n(&fds[fd], __ATOMIC_RELAXED))
        return R(close)(fd);
    struct isock *s = unmap_fd(fd);
    int rc = R(close)(fd);
    if (s)
        put(s);
    return rc;
}

/* ------------------------------------------------------------------ addresses */

static int sockaddr_in(struct isock *s, const struct sockaddr *addr, socklen_t len, uint64_t *port, unsigned char ip[16])
{
    memset(ip, 0, 16);
    if (!addr)
        return -EFAULT;
    if (len < sizeof(sa_family_t))
        return -EINVAL;
    if (addr->sa_family != s->family)
        return s->family == AF_INET6 && addr->sa_family == AF_INET ? -EINVAL : -EAFNOSUPPORT;
    if (s->family == AF_INET) {
        if (len < sizeof(struct sockaddr_in))
            return -EINVAL;
        const struct sockaddr_in *a = (const void *)addr;
        *port = ntohs(a->sin_port);
        memcpy(ip, &a->sin_addr, 4);
    } else {
        if (len < sizeof(struct sockaddr_in6))
            return -EINVAL;
        const struct sockaddr_in6 *a = (const void *)addr;
        *port = ntohs(a->sin6_port);
        memcpy(ip, &a->sin6_addr, 16);
    }
    return 0;
}

/* The address in the control page's ADDR_* words, as a sockaddr truncated to *len (getsockname's rules). */
static void store_addr(struct isock *s, struct sockaddr *addr, socklen_t *len)
{
    uint64_t family = ld(&s->ctl[ISO_C_ADDR_FAMILY]);
    uint64_t port = ld(&s->ctl[ISO_C_ADDR_PORT]);
    unsigned char ip[16];
    iso_put64(ip, ld(&s->ctl[ISO_C_ADDR_IP0]));
    iso_put64(ip + 8, ld(&s->ctl[ISO_C_ADDR_IP1]));
    union {
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } u;
    memset(&u, 0, sizeof u);
    socklen_t full;
    if (family == AF_INET6) {
        u.in6.sin6_family = AF_INET6;
        u.in6.sin6_port = htons((uint16_t)port);
        memcpy(&u.in6.sin6_addr, ip, 16);
        full = sizeof u.in6;
    } else {
        u.in.sin_family = AF_INET;
        u.in.sin_port = htons((uint16_t)port);
        memcpy(&u.in.sin_addr, ip, 4);
        full = sizeof u.in;
    }
    if (addr && len)
        memcpy(addr, &u, *len < full ? *len : full);
    if (len)
        *len = full;
}

/* ------------------------------------------------------------------ connect, bind, listen, accept */

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    struct isock *s = lookup(fd);
    if (!s)
        return R(connect)(fd, addr, len);
    int rc = 0;
    uint64_t port;
    unsigned char ip[16];
    if (s->foreign) {
        rc = -EBADF;
        goto out;
    }
    pthread_mutex_lock(&s->ctl_lock);
    if (s->connect_pos >= 0 || s->connect_unreported) { /* as the kernel: 0 once after success, then EISCONN */
        int e = s->connect_pos >= 0 ? connect_outcome(s, 0) : 0;
        rc = e < 0 ? -EALREADY : -e;
        if (e >= 0)
            s->connect_unreported = 0;
        pthread_mutex_unlock(&s->ctl_lock);
        goto out;
    }
    pthread_mutex_unlock(&s->ctl_lock);
    rc = sockaddr_in(s, addr, len, &port, ip);
    if (rc)
        goto out;
    if (!s->nonblock) {
        int64_t r = call(s, ISO_OP_CONNECT, (uint64_t)s->family, port, 0, ip);
        rc = r < 0 ? (int)r : 0;
        goto out;
    }
    pthread_mutex_lock(&s->ctl_lock);
    uint64_t state = ld(&s->ctl[ISO_C_STATE]);
    if (state & (ISO_ST_CONNECTED | ISO_ST_LISTENING)) {
        rc = -EISCONN;
    } else {
        int64_t pos = post(s, ISO_OP_CONNECT, (uint64_t)s->family, port, 0, ip);
        if (pos < 0) {
            rc = (int)pos;
        } else {
            s->connect_pos = pos;
            rc = -EINPROGRESS;
        }
    }
    pthread_mutex_unlock(&s->ctl_lock);
out:
    put(s);
    return rc ? set_errno(-rc) : 0;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    struct isock *s = lookup(fd);
    if (!s)
        return R(bind)(fd, addr, len);
    uint64_t port;
    unsigned char ip[16];
    int rc = s->foreign ? -EBADF : sockaddr_in(s, addr, len, &port, ip);
    if (!rc) {
        int64_t r = call(s, ISO_OP_BIND, (uint64_t)s->family, port, 0, ip);
        rc = r < 0 ? (int)r : 0;
    }
    put(s);
    return rc ? set_errno(-rc) : 0;
}

int listen(int fd, int backlog)
{
    struct isock *s = lookup(fd);
    if (!s)
        return R(listen)(fd, backlog);
    int rc = -EBADF;
    if (!s->foreign) {
        int64_t r = call(s, ISO_OP_LISTEN, backlog < 0 ? 0 : backlog > 65535 ? 65535 : (uint64_t)backlog, 0, 0, NULL);
        rc = r < 0 ? (int)r : 0;
    }
    put(s);
    return rc ? set_errno(-rc) : 0;
}

static int acceptable_cond(struct isock *s, uint64_t unused)
{
    (void)unused;
    return (ld(&s->ctl[ISO_C_STATE]) & (ISO_ST_ACCEPTABLE | ISO_ST_ERROR)) || s->rd_shut;
}

static int iso_accept(struct isock *s, struct sockaddr *addr, socklen_t *len, int flags)
{
    if (flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC))
        return -EINVAL;
    long long deadline = s->rcvtimeo_ns ? now_ns() + s->rcvtimeo_ns : 0;
    for (;;) {
        uint64_t state = ld(&s->ctl[ISO_C_STATE]);
        if (state & ISO_ST_ERROR)
            return -(int)ld(&s->ctl[ISO_C_ERR]);
        if (app.gone)
            return -ENETDOWN;
        if (!(state & ISO_ST_LISTENING))
            return -EINVAL;
        if (state & ISO_ST_ACCEPTABLE) {
            pthread_mutex_lock(&app_lock);
            int slot = alloc_slot();
            pthread_mutex_unlock(&app_lock);
            if (slot < 0)
                return -EMFILE;
            int64_t r = call(s, ISO_OP_ACCEPT, (uint64_t)slot, 0, 0, NULL);
            if (r >= 0) {
                struct isock *n = new_isock(slot, s->family, !!(flags & SOCK_NONBLOCK));
                int fd = n ? install(n, !!(flags & SOCK_CLOEXEC)) : -ENOMEM;
                if (fd < 0) { /* the connection is ours in isostackd: close it there */
                    if (n) {
                        n->refs = 1;
                        put(n);
                    }
                    return fd;
                }
                store_addr(n, addr, len);
                return fd;
            }
            pthread_mutex_lock(&app_lock);
            app.slot_state[slot] = SLOT_FREE;
            pthread_mutex_unlock(&app_lock);
            if (r != -EAGAIN)
                return (int)r;
            continue;
        }
        if (s->nonblock)
            return -EAGAIN;
        if (s->rd_shut)
            return -EINVAL;
        int w = wait_for(s, acceptable_cond, 0, deadline);
        if (w == -ETIMEDOUT)
            return -EAGAIN;
    }
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    struct isock *s = lookup(fd);
    if (!s)
        return R(accept4)(fd, addr, len, flags);
    int rc = s->foreign ? -EBADF : iso_accept(s, addr, len, flags);
    put(s);
    return rc < 0 ? set_errno(-rc) : rc;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    if ((unsigned)fd >= FD_MAX || !__atomic_load_n(&fds[fd], __ATOMIC_RELAXED))
        return R(accept)(fd, addr, len);
    return accept4(fd, addr, len, 0);
}

/* ------------------------------------------------------------------ send */

static void raise_sigpipe(int flags)
{
    if (!(flags & MSG_NOSIGNAL))
        pthread_kill(pthread_self(), SIGPIPE);
}

static void arm_tx(struct isock *s)
{
    if (!s->tx_armed) {
        s->tx_armed = 1;
        __atomic_fetch_add(&s->ctl[ISO_C_TX_WANT], 1, __ATOMIC_SEQ_CST);
    }
}

static void disarm_tx(struct isock *s)
{
    if (s->tx_armed) {
        s->tx_armed = 0;
        __atomic_fetch_sub(&s->ctl[ISO_C_TX_WANT], 1, __ATOMIC_SEQ_CST);
    }
}

static int space_cond(struct isock *s, uint64_t tail)
{
    uint64_t state = ld(&s->ctl[ISO_C_STATE]);
    return tail - ld(&s->ctl[ISO_C_TX_HEAD]) < s->txsize || (state & ISO_ST_ERROR);
}

/* Copy the iovecs into the tx ring (credits permitting); the bytes taken, or -errno. */
static ssize_t iso_send(struct isock *s, const struct iovec *iov, int iovcnt, int flags)
{
    if (flags & ~(MSG_DONTWAIT | MSG_NOSIGNAL | MSG_MORE | MSG_EOR))
        return -EOPNOTSUPP;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    int nonblock = s->nonblock || (flags & MSG_DONTWAIT);
    long long deadline = s->sndtimeo_ns ? now_ns() + s->sndtimeo_ns : 0;
    pthread_mutex_lock(&s->tx_lock);
    size_t copied = 0;
    int vi = 0;
    size_t voff = 0;
    ssize_t rc;
    for (;;) {
        uint64_t state = ld(&s->ctl[ISO_C_STATE]);
        if (state & ISO_ST_ERROR) {
            rc = copied ? (ssize_t)copied : -(ssize_t)ld(&s->ctl[ISO_C_ERR]);
            break;
        }
        if (app.gone) {
            rc = copied ? (ssize_t)copied : -ENETDOWN;
            break;
        }
        if (s->tx_shut || (state & ISO_ST_TX_SHUT)) {
            rc = copied ? (ssize_t)copied : -EPIPE;
            if (!copied)
                raise_sigpipe(flags);
            break;
        }
        if (!(state & ISO_ST_CONNECTED)) {
            if (s->connect_pos < 0 || (state & ISO_ST_LISTENING)) { /* the kernel's answer when not connecting */
                rc = -EPIPE;
                raise_sigpipe(flags);
                break;
            }
            if (nonblock) {
                rc = -EAGAIN;
                break;
            }
            pthread_mutex_unlock(&s->tx_lock);
            pthread_mutex_lock(&s->ctl_lock);
            int e = s->connect_pos >= 0 ? connect_outcome(s, 1) : 0;
            if (e > 0)
                s->pending_error = e;
            pthread_mutex_unlock(&s->ctl_lock);
            pthread_mutex_lock(&s->tx_lock);
            if (e > 0) {
                rc = -e;
                break;
            }
            continue;
        }
        if (total == 0) {
            rc = 0;
            break;
        }
        uint64_t tail = s->tx_tail;
        uint64_t used = tail - ld(&s->ctl[ISO_C_TX_HEAD]);
        uint64_t free_ = used >= s->txsize ? 0 : s->txsize - used;
        if (free_ == 0) {
            if (copied) {
                rc = (ssize_t)copied;
                if (!nonblock)
                    goto wait_space;
                break;
            }
            if (nonblock) {
                arm_tx(s);
                rc = -EAGAIN;
                break;
            }
        wait_space:
            __atomic_fetch_add(&s->ctl[ISO_C_TX_WANT], 1, __ATOMIC_SEQ_CST);
            int w = wait_for(s, space_cond, tail, deadline);
            __atomic_fetch_sub(&s->ctl[ISO_C_TX_WANT], 1, __ATOMIC_SEQ_CST);
            if (w == -ETIMEDOUT) {
                rc = copied ? (ssize_t)copied : -EAGAIN;
                break;
            }
            continue; /* -ENETDOWN: seen at the top */
        }
        disarm_tx(s);
        uint64_t k = 0;
        while (k < free_ && vi < iovcnt) {
            size_t n = iov[vi].iov_len - voff;
            if (n > free_ - k)
                n = free_ - k;
            const unsigned char *src = (const unsigned char *)iov[vi].iov_base + voff;
            uint64_t off = (tail + k) & (s->txsize - 1);
            uint64_t first = s->txsize - off < n ? s->txsize - off : n;
            memcpy(s->txr + off, src, first);
            if (first < n)
                memcpy(s->txr, src + first, n - first);
            k += n;
            voff += n;
            if (voff == iov[vi].iov_len) {
                vi++;
                voff = 0;
            }
        }
        tail += k;
        s->tx_tail = tail;
        copied += k;
        st(&s->ctl[ISO_C_TX_TAIL], tail);
        /* the membarrier handshake (docs/queue-abi.md) needs the tail store before the flag load in program
         * order; a relaxed load may otherwise be hoisted above a release store by the compiler */
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        uint64_t *dr = &s->ctl[ISO_C_DRAINING];
        if ((!app.asym || !__atomic_load_n(dr, __ATOMIC_RELAXED)) && __atomic_exchange_n(dr, 1, __ATOMIC_SEQ_CST) == 0) {
            if (post(s, ISO_OP_SEND, tail, 0, 0, NULL) < 0) {
                st(dr, 0); /* hand the flag back: the next send posts instead */
                rc = copied ? (ssize_t)copied : -EIO;
                break;
            }
        }
        if (copied == total || nonblock) {
            rc = (ssize_t)copied;
            break;
        }
    }
    pthread_mutex_unlock(&s->tx_lock);
    return rc;
}

/* ------------------------------------------------------------------ receive */

static int readable_cond(struct isock *s, uint64_t head)
{
    return ld(&s->ctl[ISO_C_RX_TAIL]) != head || (ld(&s->ctl[ISO_C_STATE]) & (ISO_ST_EOF | ISO_ST_ERROR)) ||
           s->rd_shut;
}

static ssize_t iso_recv(struct isock *s, const struct iovec *iov, int iovcnt, int flags)
{
    if (flags & MSG_OOB)
        return -EINVAL;
    if (flags & ~(MSG_DONTWAIT | MSG_PEEK | MSG_WAITALL | MSG_NOSIGNAL | MSG_CMSG_CLOEXEC))
        return -EOPNOTSUPP;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    int nonblock = s->nonblock || (flags & MSG_DONTWAIT);
    long long deadline = s->rcvtimeo_ns ? now_ns() + s->rcvtimeo_ns : 0;
    pthread_mutex_lock(&s->rx_lock);
    size_t copied = 0;
    ssize_t rc;
    for (;;) {
        uint64_t head = s->rx_head;
        uint64_t avail = ld(&s->ctl[ISO_C_RX_TAIL]) - head;
        if (avail > s->rxsize) {
            rc = -EIO; /* impossible unless the memory is corrupt */
            break;
        }
        if (total == 0) {
            rc = 0;
            break;
        }
        if (avail) {
            uint64_t want = total - copied, k = avail < want ? avail : want, done = 0;
            size_t skip = copied;
            for (int i = 0; i < iovcnt && done < k; i++) {
                if (skip >= iov[i].iov_len) {
                    skip -= iov[i].iov_len;
                    continue;
                }
                size_t n = iov[i].iov_len - skip;
                if (n > k - done)
                    n = k - done;
                unsigned char *dst = (unsigned char *)iov[i].iov_base + skip;
                uint64_t off = (head + done) & (s->rxsize - 1);
                uint64_t first = s->rxsize - off < n ? s->rxsize - off : n;
                memcpy(dst, s->rxr + off, first);
                if (first < n)
                    memcpy(dst + first, s->rxr, n - first);
                done += n;
                skip = 0;
            }
            copied += k;
            if (flags & MSG_PEEK) {
                rc = (ssize_t)copied;
                break;
            }
            s->rx_head = head + k;
            st(&s->ctl[ISO_C_RX_HEAD], s->rx_head);
            if (copied == total || !(flags & MSG_WAITALL) || nonblock) {
                rc = (ssize_t)copied;
                break;
            }
            continue;
        }
        uint64_t state = ld(&s->ctl[ISO_C_STATE]);
        if (state & ISO_ST_ERROR) {
            rc = copied ? (ssize_t)copied : -(ssize_t)ld(&s->ctl[ISO_C_ERR]);
            break;
        }
        if (s->rd_shut) {
            rc = (ssize_t)copied;
            break;
        }
        if (app.gone) {
            rc = copied ? (ssize_t)copied : -ENETDOWN;
            break;
        }
        if (state & ISO_ST_EOF) {
            if (ld(&s->ctl[ISO_C_RX_TAIL]) != head)
                continue; /* EOF is published after the last data */
            rc = (ssize_t)copied;
            break;
        }
        if (!(state & ISO_ST_CONNECTED) && s->connect_pos < 0) {
            rc = copied ? (ssize_t)copied : -ENOTCONN;
            break;
        }
        if (nonblock) {
            rc = copied ? (ssize_t)copied : -EAGAIN;
            break;
        }
        if (wait_for(s, readable_cond, head, deadline) == -ETIMEDOUT) {
            rc = copied ? (ssize_t)copied : -EAGAIN;
            break;
        }
    }
    pthread_mutex_unlock(&s->rx_lock);
    return rc;
}

/* ------------------------------------------------------------------ the data calls */

#define OWNED_OR(fd, passthrough)                                                                                  \
    if ((unsigned)(fd) >= FD_MAX || !__atomic_load_n(&fds[fd], __ATOMIC_RELAXED))                                 \
        return passthrough;                                                                                        \
    struct isock *s = lookup(fd);                                                                                  \
    if (!s)                                                                                                        \
        return passthrough;                                                                                        \
    if (s->foreign) {                                                                                              \
        put(s);                                                                                                    \
        return set_errno(EBADF);                                                                                   \
    }

static ssize_t finish(struct isock *s, ssize_t rc)
{
    put(s);
    return rc < 0 ? set_errno((int)-rc) : rc;
}

ssize_t write(int fd, const void *buf, size_t len)
{
    OWNED_OR(fd, R(write)(fd, buf, len))
    struct iovec v = {(void *)buf, len};
    return finish(s, iso_send(s, &v, 1, 0));
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    OWNED_OR(fd, R(send)(fd, buf, len, flags))
    struct iovec v = {(void *)buf, len};
    return finish(s, iso_send(s, &v, 1, flags));
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen)
{
    OWNED_OR(fd, R(sendto)(fd, buf, len, flags, to, tolen))
    struct iovec v = {(void *)buf, len}; /* TCP ignores the address, as the kernel does */
    return finish(s, iso_send(s, &v, 1, flags));
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
    OWNED_OR(fd, R(writev)(fd, iov, iovcnt))
    if (iovcnt < 0 || iovcnt > IOV_MAX)
        return finish(s, -EINVAL);
    return finish(s, iso_send(s, iov, iovcnt, 0));
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    OWNED_OR(fd, R(sendmsg)(fd, msg, flags))
    if (msg->msg_controllen) /* ancillary data on TCP (SCM_RIGHTS is Unix-only): refused, not dropped */
        return finish(s, -EINVAL);
    if (msg->msg_iovlen > IOV_MAX)
        return finish(s, -EMSGSIZE);
    return finish(s, iso_send(s, msg->msg_iov, (int)msg->msg_iovlen, flags));
}

ssize_t read(int fd, void *buf, size_t len)
{
    OWNED_OR(fd, R(read)(fd, buf, len))
    struct iovec v = {buf, len};
    return finish(s, iso_recv(s, &v, 1, 0));
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    OWNED_OR(fd, R(recv)(fd, buf, len, flags))
    struct iovec v = {buf, len};
    return finish(s, iso_recv(s, &v, 1, flags));
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *from, socklen_t *fromlen)
{
    OWNED_OR(fd, R(recvfrom)(fd, buf, len, flags, from, fromlen))
    struct iovec v = {buf, len};
    if (fromlen)
        *fromlen = 0; /* the kernel's TCP fills no address either */
    return finish(s, iso_recv(s, &v, 1, flags));
}

ssize_t readv(int fd, const struct iovec *iov, int iovcnt)
{
    OWNED_OR(fd, R(readv)(fd, iov, iovcnt))
    if (iovcnt < 0 || iovcnt > IOV_MAX)
        return finish(s, -EINVAL);
    return finish(s, iso_recv(s, iov, iovcnt, 0));
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    OWNED_OR(fd, R(recvmsg)(fd, msg, flags))
    if (msg->msg_iovlen > IOV_MAX)
        return finish(s, -EMSGSIZE);
    msg->msg_namelen = 0;
    msg->msg_controllen = 0;
    msg->msg_flags = 0;
    return finish(s, iso_recv(s, msg->msg_iov, (int)msg->msg_iovlen, flags));
}

/* ------------------------------------------------------------------ shutdown, names, options */

int shutdown(int fd, int how)
{
    OWNED_OR(fd, R(shutdown)(fd, how))
    if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR)
        return (int)finish(s, -EINVAL);
    if (!(ld(&s->ctl[ISO_C_STATE]) & (ISO_ST_CONNECTED | ISO_ST_LISTENING)))
        return (int)finish(s, -ENOTCONN);
    if (how != SHUT_RD) { /* take the tx lock: no send is half-way through the ring */
        pthread_mutex_lock(&s->tx_lock);
        s->tx_shut = 1;
        pthread_mutex_unlock(&s->tx_lock);
    }
    int64_t r = call(s, ISO_OP_SHUTDOWN, (uint64_t)how, 0, 0, NULL);
    if (how != SHUT_WR) { /* wake the threads blocked in recv/accept on it: they return 0 / EINVAL */
        s->rd_shut = 1;
        uint64_t one = 1;
        if (R(write)(s->priv, &one, 8) < 0) {
        }
    }
    return (int)finish(s, r < 0 ? r : 0);
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
    OWNED_OR(fd, R(getsockname)(fd, addr, len))
    if (!len)
        return (int)finish(s, -EFAULT);
    pthread_mutex_lock(&s->ctl_lock);
    int64_t r = call_locked(s, ISO_OP_GETSOCKNAME, 0, 0, 0, NULL);
    if (r >= 0)
        store_addr(s, addr, len);
    pthread_mutex_unlock(&s->ctl_lock);
    return (int)finish(s, r < 0 ? r : 0);
}

int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
    OWNED_OR(fd, R(getpeername)(fd, addr, len))
    if (!len)
        return (int)finish(s, -EFAULT);
    pthread_mutex_lock(&s->ctl_lock);
    int64_t r = call_locked(s, ISO_OP_GETPEERNAME, 0, 0, 0, NULL);
    if (r >= 0)
        store_addr(s, addr, len);
    pthread_mutex_unlock(&s->ctl_lock);
    return (int)finish(s, r < 0 ? r : 0);
}

/* Options the dispatcher sets on its kernel socket (layout.SOCKOPT_ALLOWED) and may read back. */
static int option_forwarded(int level, int name, int for_get)
{
    if (level == SOL_SOCKET && (name == SO_REUSEADDR || name == SO_REUSEPORT || name == SO_KEEPALIVE ||
                                name == SO_SNDBUF || name == SO_RCVBUF))
        return 1;
    if (level == IPPROTO_TCP && name == TCP_NODELAY)
        return 1;
    return for_get && ((level == SOL_SOCKET && (name == SO_ACCEPTCONN || name == SO_INCOMING_CPU ||
                                                name == SO_BUSY_POLL)) ||
                       (level == IPPROTO_TCP && name == TCP_MAXSEG));
}

static int bindv6only_default(void)
{
    int fd = open("/proc/sys/net/ipv6/bindv6only", O_RDONLY | O_CLOEXEC);
    char c = '0';
    if (fd >= 0) {
        if (R(read)(fd, &c, 1) != 1)
            c = '0';
        R(close)(fd);
    }
    return c == '1';
}

static long long timeval_ns(const void *v, socklen_t len)
{
    struct timeval tv;
    if (len < sizeof tv)
        return -1;
    memcpy(&tv, v, sizeof tv);
    if (tv.tv_sec < 0 || tv.tv_usec < 0 || tv.tv_usec >= 1000000)
        return -1;
    return tv.tv_sec * 1000000000LL + tv.tv_usec * 1000LL;
}

int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
{
    OWNED_OR(fd, R(setsockopt)(fd, level, name, value, len))
    if (!value)
        return (int)finish(s, -EFAULT);
    if (level == SOL_SOCKET && (name == SO_RCVTIMEO || name == SO_SNDTIMEO)) {
        long long ns = timeval_ns(value, len);
        if (ns < 0)
            return (int)finish(s, -EDOM);
        *(name == SO_RCVTIMEO ? &s->rcvtimeo_ns : &s->sndtimeo_ns) = ns;
        return (int)finish(s, 0);
    }
    if (len < sizeof(int))
        return (int)finish(s, -EINVAL);
    int v;
    memcpy(&v, value, sizeof v);
    if (level == IPPROTO_IPV6 && name == IPV6_V6ONLY && s->family == AF_INET6) /* the kernel default only */
        return (int)finish(s, (!!v) == bindv6only_default() ? 0 : -ENOPROTOOPT);
    if (!option_forwarded(level, name, 0))
        return (int)finish(s, -ENOPROTOOPT);
    int64_t r = call(s, ISO_OP_SETSOCKOPT, (uint64_t)level, (uint64_t)name, (uint64_t)(v < 0 ? 0 : v), NULL);
    return (int)finish(s, r < 0 ? r : 0);
}

int getsockopt(int fd, int level, int name, void *value, socklen_t *len)
{
    OWNED_OR(fd, R(getsockopt)(fd, level, name, value, len))
    if (!value || !len)
        return (int)finish(s, -EFAULT);
    if (level == SOL_SOCKET && (name == SO_RCVTIMEO || name == SO_SNDTIMEO)) {
        long long ns = name == SO_RCVTIMEO ? s->rcvtimeo_ns : s->sndtimeo_ns;
        struct timeval tv = {ns / 1000000000LL, (ns % 1000000000LL) / 1000};
        socklen_t n = *len < sizeof tv ? *len : sizeof tv;
        memcpy(value, &tv, n);
        *len = n;
        return (int)finish(s, 0);
    }
    int v;
    if (level == SOL_SOCKET && name == SO_ERROR) {
        pthread_mutex_lock(&s->ctl_lock);
        if (s->connect_pos >= 0) {
            int e = connect_outcome(s, 0);
            v = e < 0 ? 0 : e;
        } else if (s->pending_error) {
            v = s->pending_error;
            s->pending_error = 0;
        } else {
            v = (ld(&s->ctl[ISO_C_STATE]) & ISO_ST_ERROR) ? (int)ld(&s->ctl[ISO_C_ERR]) : 0;
        }
        pthread_mutex_unlock(&s->ctl_lock);
    } else if (level == SOL_SOCKET && name == SO_TYPE) {
        v = SOCK_STREAM;
    } else if (level == SOL_SOCKET && name == SO_DOMAIN) {
        v = s->family;
    } else if (level == SOL_SOCKET && name == SO_PROTOCOL) {
        v = IPPROTO_TCP;
    } else if (level == IPPROTO_IPV6 && name == IPV6_V6ONLY && s->family == AF_INET6) {
        v = bindv6only_default();
    } else if (option_forwarded(level, name, 1)) {
        pthread_mutex_lock(&s->ctl_lock);
        int64_t r = call_locked(s, ISO_OP_GETSOCKOPT, (uint64_t)level, (uint64_t)name, 0, NULL);
        v = (int)ld(&s->ctl[ISO_C_OPTVAL]);
        pthread_mutex_unlock(&s->ctl_lock);
        if (r < 0)
            return (int)finish(s, r);
    } else {
        return (int)finish(s, -ENOPROTOOPT); /* TCP_INFO among them: one word cannot carry it honestly */
    }
    socklen_t n = *len < sizeof v ? *len : sizeof v;
    memcpy(value, &v, n);
    *len = n;
    return (int)finish(s, 0);
}

/* ------------------------------------------------------------------ dup, fcntl, ioctl */

/* Map newfd (a dup of an IsoStack socket's fd) to s; the real fd stays close-on-exec (docs/preload.md). */
static int map_dup(struct isock *s, int newfd, int cloexec)
{
    if (newfd < 0)
        return -1;
    if (newfd >= FD_MAX) {
        R(close)(newfd);
        return set_errno(EMFILE);
    }
    R(fcntl)(newfd, F_SETFD, FD_CLOEXEC);
    pthread_mutex_lock(&tab_lock);
    struct isock *old = fds[newfd];
    s->refs++;
    fds[newfd] = s;
    fd_cloexec[newfd] = (unsigned char)cloexec;
    pthread_mutex_unlock(&tab_lock);
    if (old)
        put(old);
    return newfd;
}

int dup(int fd)
{
    OWNED_OR(fd, R(dup)(fd))
    int r = map_dup(s, R(dup)(fd), 0);
    put(s);
    return r;
}

static int iso_dup3(int oldfd, int newfd, int flags, int is_dup2)
{
    struct isock *s = lookup(oldfd);
    int new_owned = (unsigned)newfd < FD_MAX && __atomic_load_n(&fds[newfd], __ATOMIC_RELAXED);
    if (!s && !new_owned)
        return is_dup2 ? R(dup2)(oldfd, newfd) : R(dup3)(oldfd, newfd, flags);
    if (oldfd == newfd) {
        if (s)
            put(s);
        return is_dup2 ? newfd : set_errno(EINVAL);
    }
    int r = is_dup2 ? R(dup2)(oldfd, newfd) : R(dup3)(oldfd, newfd, flags);
    if (r < 0) {
        if (s)
            put(s);
        return r;
    }
    if (s) {
        r = map_dup(s, r, !!(flags & O_CLOEXEC));
        put(s);
        return r;
    }
    struct isock *gone = unmap_fd(newfd); /* the kernel closed newfd's socket as part of dup2 */
    if (gone)
        put(gone);
    return r;
}

int dup2(int oldfd, int newfd) { return iso_dup3(oldfd, newfd, 0, 1); }
int dup3(int oldfd, int newfd, int flags) { return iso_dup3(oldfd, newfd, flags, 0); }

static int iso_fcntl(int fd, int cmd, uintptr_t arg, int *handled)
{
    struct isock *s = lookup(fd);
    *handled = s != NULL;
    if (!s)
        return 0;
    int rc;
    switch (cmd) {
    case F_GETFL:
        rc = O_RDWR | (s->nonblock ? O_NONBLOCK : 0);
        break;
    case F_SETFL:
        s->nonblock = !!(arg & O_NONBLOCK);
        rc = 0;
        break;
    case F_GETFD:
        rc = fd_cloexec[fd] ? FD_CLOEXEC : 0;
        break;
    case F_SETFD:
        fd_cloexec[fd] = !!(arg & FD_CLOEXEC);
        rc = 0;
        break;
    case F_DUPFD:
    case F_DUPFD_CLOEXEC:
        rc = map_dup(s, R(fcntl)(fd, F_DUPFD_CLOEXEC, (int)arg), cmd == F_DUPFD_CLOEXEC);
        break;
    default: /* F_SETOWN, F_SETSIG, locks, leases...: not for an IsoStack socket */
        rc = set_errno(EINVAL);
    }
    put(s);
    return rc;
}

int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    uintptr_t arg = va_arg(ap, uintptr_t);
    va_end(ap);
    int handled;
    int rc = iso_fcntl(fd, cmd, arg, &handled);
    return handled ? rc : R(fcntl)(fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    uintptr_t arg = va_arg(ap, uintptr_t);
    va_end(ap);
    int handled;
    int rc = iso_fcntl(fd, cmd, arg, &handled);
    return handled ? rc : (R(fcntl64) ? real_fcntl64(fd, cmd, arg) : R(fcntl)(fd, cmd, arg));
}

int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    OWNED_OR(fd, R(ioctl)(fd, request, arg))
    int rc = 0;
    if (request == FIONBIO) {
        int v;
        memcpy(&v, arg, sizeof v);
        s->nonblock = !!v;
    } else if (request == FIONREAD) {
        int v = (int)(ld(&s->ctl[ISO_C_RX_TAIL]) - s->rx_head);
        memcpy(arg, &v, sizeof v);
    } else {
        rc = -ENOTTY;
    }
    return (int)finish(s, rc);
}

/* ------------------------------------------------------------------ readiness: poll, select, epoll */

/* The poll events an IsoStack socket has now (as the kernel's tcp_poll would report them). */
static short ready_events(struct isock *s, short want)
{
    if (s->foreign)
        return POLLNVAL;
    uint64_t state = ld(&s->ctl[ISO_C_STATE]);
    short ev = 0;
    if (app.gone)
        return (POLLERR | POLLHUP | POLLIN | POLLOUT) & (want | POLLERR | POLLHUP);
    if (state & ISO_ST_ERROR)
        ev |= POLLERR | POLLHUP | POLLIN | POLLOUT | POLLRDHUP;
    if (state & ISO_ST_LISTENING) {
        if (state & ISO_ST_ACCEPTABLE)
            ev |= POLLIN;
        return ev & (want | POLLERR | POLLHUP | POLLNVAL);
    }
    if (s->connect_pos >= 0) {
        if (!done_cond(s, (uint64_t)s->connect_pos))
            return ev & (want | POLLERR | POLLHUP | POLLNVAL);
        int64_t r = result(s, s->connect_pos);
        if (r < 0)
            ev |= POLLERR | POLLHUP | POLLIN | POLLOUT | POLLRDHUP;
    }
    if (s->pending_error)
        ev |= POLLERR | POLLHUP | POLLIN | POLLOUT | POLLRDHUP;
    if (ld(&s->ctl[ISO_C_RX_TAIL]) != s->rx_head)
        ev |= POLLIN | POLLRDNORM;
    if ((state & ISO_ST_EOF) || s->rd_shut)
        ev |= POLLIN | POLLRDNORM | POLLRDHUP;
    if (state & ISO_ST_CONNECTED) {
        if (s->tx_shut || (state & ISO_ST_TX_SHUT) ||
            s->tx_tail - ld(&s->ctl[ISO_C_TX_HEAD]) < s->txsize)
            ev |= POLLOUT | POLLWRNORM;
        if ((state & ISO_ST_EOF) && (s->tx_shut || (state & ISO_ST_TX_SHUT)))
            ev |= POLLHUP;
    } else if (s->connect_pos < 0 && !(state & ISO_ST_ERROR)) {
        ev |= POLLOUT | POLLHUP; /* a fresh, unconnected socket */
    }
    return ev & (want | POLLERR | POLLHUP | POLLNVAL);
}

/* Before sleeping on it: arm the readiness eventfd (and tx credits for POLLOUT), drain it, look again. */
static short arm(struct isock *s, short want)
{
    if (ensure_watch(s))
        return 0;
    /* a sender blocked in send() holds tx_lock and arms credits itself: never wait for it here */
    if ((want & POLLOUT) && (ld(&s->ctl[ISO_C_STATE]) & ISO_ST_CONNECTED) && !pthread_mutex_trylock(&s->tx_lock)) {
        if (s->tx_tail - ld(&s->ctl[ISO_C_TX_HEAD]) >= s->txsize)
            arm_tx(s);
        pthread_mutex_unlock(&s->tx_lock);
    }
    __atomic_exchange_n(&s->ctl[ISO_C_WATCH_ARMED], 1, __ATOMIC_SEQ_CST);
    uint64_t junk;
    if (R(read)(s->priv, &junk, 8) < 0) {
    }
    return ready_events(s, want);
}

/* poll over IsoStack sockets and ordinary fds: the sockets' state is read from shared memory, the others are
 * polled by the kernel together with the sockets' private eventfds.  timeout_ns < 0: forever. */
static int iso_poll(struct pollfd *pfd, nfds_t n, long long timeout_ns, const sigset_t *mask)
{
    struct isock *owned_stack[64];
    struct isock **owned = n <= 64 ? owned_stack : calloc(n, sizeof *owned);
    struct pollfd *kp = calloc(n ? n : 1, sizeof *kp);
    if (!owned || !kp) {
        free(kp);
        if (owned != owned_stack)
            free(owned);
        return set_errno(ENOMEM);
    }
    int any = 0;
    for (nfds_t i = 0; i < n; i++) {
        owned[i] = pfd[i].fd >= 0 ? lookup(pfd[i].fd) : NULL;
        any |= owned[i] != NULL;
    }
    long long deadline = timeout_ns >= 0 ? now_ns() + timeout_ns : 0;
    int rc = 0, armed = 0;
    for (;;) {
        int ready = 0;
        for (nfds_t i = 0; i < n; i++) {
            if (owned[i]) {
                pfd[i].revents = armed ? arm(owned[i], pfd[i].events) : ready_events(owned[i], pfd[i].events);
                ready += pfd[i].revents != 0;
            }
            kp[i].fd = owned[i] ? (owned[i]->foreign ? -1 : owned[i]->priv) : pfd[i].fd;
            kp[i].events = owned[i] ? POLLIN : pfd[i].events;
            kp[i].revents = 0;
        }
        int sleep_ms = 0;
        if (!ready && armed) {
            if (timeout_ns >= 0) {
                long long left = deadline - now_ns();
                sleep_ms = left <= 0 ? 0 : (int)(left / 1000000) + (left % 1000000 != 0);
            } else {
                sleep_ms = -1;
            }
            if (any && (sleep_ms < 0 || sleep_ms > SLICE_MS))
                sleep_ms = SLICE_MS;
        }
        int k;
        if (mask) {
            struct timespec ts = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000L}, *tp = sleep_ms < 0 ? NULL : &ts;
            k = R(ppoll)(kp, n, tp, mask);
        } else {
            k = R(poll)(kp, n, sleep_ms);
        }
        if (k < 0) {
            rc = -1;
            break;
        }
        for (nfds_t i = 0; i < n; i++)
            if (!owned[i]) {
                pfd[i].revents = kp[i].revents;
                ready += kp[i].revents != 0;
            }
        if (ready) {
            if (armed) /* the state may have changed while we slept: report it */
                for (nfds_t i = 0; i < n; i++)
                    if (owned[i]) {
                        short before = pfd[i].revents;
                        pfd[i].revents = ready_events(owned[i], pfd[i].events);
                        ready += (pfd[i].revents != 0) - (before != 0);
                    }
            rc = ready;
            break;
        }
        if (timeout_ns >= 0 && now_ns() >= deadline && armed) {
            rc = 0;
            break;
        }
        if (armed && any)
            dispatcher_gone(); /* then ready_events reports POLLERR|POLLHUP on ours */
        if (timeout_ns == 0) {
            rc = 0;
            break;
        }
        armed = 1;
    }
    for (nfds_t i = 0; i < n; i++)
        if (owned[i])
            put(owned[i]);
    free(kp);
    if (owned != owned_stack)
        free(owned);
    return rc;
}

static int any_owned(const struct pollfd *pfd, nfds_t n)
{
    for (nfds_t i = 0; i < n; i++)
        if ((unsigned)pfd[i].fd < FD_MAX && __atomic_load_n(&fds[pfd[i].fd], __ATOMIC_RELAXED))
            return 1;
    return 0;
}

int poll(struct pollfd *pfd, nfds_t n, int timeout)
{
    if (!any_owned(pfd, n))
        return R(poll)(pfd, n, timeout);
    return iso_poll(pfd, n, timeout < 0 ? -1 : timeout * 1000000LL, NULL);
}

int ppoll(struct pollfd *pfd, nfds_t n, const struct timespec *ts, const sigset_t *mask)
{
    if (!any_owned(pfd, n))
        return R(ppoll)(pfd, n, ts, mask);
    return iso_poll(pfd, n, ts ? ts->tv_sec * 1000000000LL + ts->tv_nsec : -1, mask);
}

int select(int nfds, fd_set *rd, fd_set *wr, fd_set *ex, struct timeval *tv)
{
    int owned = 0;
    for (int fd = 0; fd < nfds && fd < FD_SETSIZE && !owned; fd++)
        owned = __atomic_load_n(&fds[fd], __ATOMIC_RELAXED) &&
                ((rd && FD_ISSET(fd, rd)) || (wr && FD_ISSET(fd, wr)) || (ex && FD_ISSET(fd, ex)));
    if (!owned)
        return R(select)(nfds, rd, wr, ex, tv);
    if (nfds > FD_SETSIZE)
        nfds = FD_SETSIZE;
    struct pollfd *pfd = calloc((size_t)nfds, sizeof *pfd);
    if (!pfd)
        return set_errno(ENOMEM);
    nfds_t n = 0;
    for (int fd = 0; fd < nfds; fd++) {
        short ev = (rd && FD_ISSET(fd, rd) ? POLLIN : 0) | (wr && FD_ISSET(fd, wr) ? POLLOUT : 0) |
                   (ex && FD_ISSET(fd, ex) ? POLLPRI : 0);
        if (ev)
            pfd[n++] = (struct pollfd){fd, ev, 0};
    }
    long long timeout_ns = tv ? tv->tv_sec * 1000000000LL + tv->tv_usec * 1000LL : -1;
    long long t0 = now_ns();
    int k = iso_poll(pfd, n, timeout_ns, NULL);
    if (k < 0) {
        free(pfd);
        return -1;
    }
    for (nfds_t i = 0; i < n; i++)
        if (pfd[i].revents & POLLNVAL) {
            free(pfd);
            return set_errno(EBADF);
        }
    if (rd)
        FD_ZERO(rd);
    if (wr)
        FD_ZERO(wr);
    if (ex)
        FD_ZERO(ex);
    int count = 0;
    for (nfds_t i = 0; i < n; i++) {
        short r = pfd[i].revents, e = pfd[i].events;
        if (rd && (e & POLLIN) && (r & (POLLIN | POLLHUP | POLLERR))) {
            FD_SET(pfd[i].fd, rd);
            count++;
        }
        if (wr && (e & POLLOUT) && (r & (POLLOUT | POLLERR))) {
            FD_SET(pfd[i].fd, wr);
            count++;
        }
        if (ex && (e & POLLPRI) && (r & POLLPRI)) {
            FD_SET(pfd[i].fd, ex);
            count++;
        }
    }
    if (tv) { /* Linux updates the timeout to the time not slept */
        long long left = timeout_ns - (now_ns() - t0);
        if (left < 0)
            left = 0;
        tv->tv_sec = left / 1000000000LL;
        tv->tv_usec = (left % 1000000000LL) / 1000;
    }
    free(pfd);
    return count;
}

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    struct isock *s = lookup(fd);
    if (!s)
        return R(epoll_ctl)(epfd, op, fd, ev);
    int rc = 0;
    if ((unsigned)epfd >= FD_MAX || epfd == fd) {
        put(s);
        return set_errno(EINVAL);
    }
    if (op != EPOLL_CTL_DEL && !ev) {
        put(s);
        return set_errno(EFAULT);
    }
    pthread_mutex_lock(&tab_lock);
    struct ep_item **pp = &ep_lists[epfd];
    while (*pp && (*pp)->fd != fd)
        pp = &(*pp)->next;
    if (op == EPOLL_CTL_ADD) {
        if (*pp) {
            rc = EEXIST;
        } else {
            struct ep_item *it = calloc(1, sizeof *it);
            if (!it) {
                rc = ENOMEM;
            } else {
                *it = (struct ep_item){fd, s, *ev, 0, ep_lists[epfd]};
                ep_lists[epfd] = it;
                ep_count++;
            }
        }
    } else if (op == EPOLL_CTL_MOD) {
        if (!*pp) {
            rc = ENOENT;
        } else {
            (*pp)->ev = *ev;
            (*pp)->disabled = 0;
        }
    } else if (op == EPOLL_CTL_DEL) {
        if (!*pp) {
            rc = ENOENT;
        } else {
            struct ep_item *dead = *pp;
            *pp = dead->next;
            free(dead);
            ep_count--;
        }
    } else {
        rc = EINVAL;
    }
    pthread_mutex_unlock(&tab_lock);
    put(s);
    return rc ? set_errno(rc) : 0;
}

/* The IsoStack members of an epoll set that are ready (level-triggered), into out[0..max). */
static int ep_collect(int epfd, struct epoll_event *out, int max, int do_arm)
{
    int n = 0;
    pthread_mutex_lock(&tab_lock);
    for (struct ep_item *it = ep_lists[epfd]; it && n < max; it = it->next) {
        if (it->disabled)
            continue;
        short want = (short)((it->ev.events & EPOLLIN ? POLLIN : 0) | (it->ev.events & EPOLLOUT ? POLLOUT : 0) |
                             (it->ev.events & EPOLLRDHUP ? POLLRDHUP : 0));
        short r = do_arm ? arm(it->s, want) : ready_events(it->s, want);
        if (!r)
            continue;
        uint32_t e = (r & POLLIN ? EPOLLIN : 0) | (r & POLLOUT ? EPOLLOUT : 0) | (r & POLLERR ? EPOLLERR : 0) |
                     (r & POLLHUP ? EPOLLHUP : 0) | (r & POLLRDHUP ? EPOLLRDHUP : 0);
        out[n].events = e;
        out[n].data = it->ev.data;
        n++;
        if (it->ev.events & EPOLLONESHOT)
            it->disabled = 1;
    }
    pthread_mutex_unlock(&tab_lock);
    return n;
}

static int iso_epoll_wait(int epfd, struct epoll_event *events, int max, int timeout, const sigset_t *mask)
{
    if ((unsigned)epfd >= FD_MAX || !__atomic_load_n(&ep_lists[epfd], __ATOMIC_RELAXED))
        return mask ? R(epoll_pwait)(epfd, events, max, timeout, mask) : R(epoll_wait)(epfd, events, max, timeout);
    if (max <= 0)
        return set_errno(EINVAL);
    long long deadline = timeout >= 0 ? now_ns() + timeout * 1000000LL : 0;
    int armed = 0;
    for (;;) {
        int n = ep_collect(epfd, events, max, armed);
        if (n < max) {
            int k = R(epoll_wait)(epfd, events + n, max - n, 0);
            if (k < 0)
                return n ? n : -1;
            n += k;
        }
        if (n)
            return n;
        if (timeout == 0 || (armed && timeout > 0 && now_ns() >= deadline))
            return 0;
        if (!armed) {
            armed = 1;
            continue;
        }
        /* sleep on the epoll fd and every member's private eventfd */
        struct pollfd pf[65];
        int np = 0;
        pf[np++] = (struct pollfd){epfd, POLLIN, 0};
        pthread_mutex_lock(&tab_lock);
        for (struct ep_item *it = ep_lists[epfd]; it && np < 65; it = it->next)
            pf[np++] = (struct pollfd){it->s->priv, POLLIN, 0};
        pthread_mutex_unlock(&tab_lock);
        int ms = SLICE_MS;
        if (timeout > 0) {
            long long left = deadline - now_ns();
            if (left / 1000000 < ms)
                ms = (int)(left / 1000000) + 1;
        }
        int k;
        if (mask) {
            struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
            k = R(ppoll)(pf, (nfds_t)np, &ts, mask);
        } else {
            k = R(poll)(pf, (nfds_t)np, ms);
        }
        if (k < 0)
            return -1;
        dispatcher_gone();
    }
}

int epoll_wait(int epfd, struct epoll_event *events, int max, int timeout)
{
    return iso_epoll_wait(epfd, events, max, timeout, NULL);
}

int epoll_pwait(int epfd, struct epoll_event *events, int max, int timeout, const sigset_t *mask)
{
    return iso_epoll_wait(epfd, events, max, timeout, mask);
}

/* For isostack-run and the tests: whether this process is attached, and to which socket. */
int isostack_preload_attached(char *path, size_t cap)
{
    if (path && cap)
        snprintf(path, cap, "%s", app.path);
    return app.attached;
}

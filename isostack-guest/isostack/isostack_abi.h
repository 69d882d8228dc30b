/* The IsoStack queue ABI in C: the shared-memory layout, command and notification entries, and the attach
 * hello, as docs/queue-abi.md specifies them and layout.py / attach.py implement them in Python.
 *
 * Header-only (static inline) so that the preload shim (libisostack-preload.c) and the C vector test
 * (tests/c/abi_vectors.c) compile the same encoder; tests/test_isostack_queue_abi.py checks every #define
 * ISO_* here against layout.py and both implementations against tests/fixtures/queue-abi-vectors.json.
 */
#ifndef ISOSTACK_ABI_H
#define ISOSTACK_ABI_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define ISO_MAGIC 0x4B434154534F5349ull /* "ISOSTACK" little-endian */
#define ISO_VERSION 1
#define ISO_PAGE 4096
#define ISO_CACHE_LINE 64
#define ISO_HEADER_SIZE 4096
#define ISO_CONTROL_SIZE 4096
#define ISO_RING_HDR 128
#define ISO_ENTRY_SIZE 64
#define ISO_BODY_SIZE 48
#define ISO_NOTIF_ENTRY_SIZE 16
#define ISO_MAX_RINGS 64
#define ISO_MAX_SOCKETS_LIMIT 4096

/* app header, u64 word indices */
#define ISO_H_MAGIC 0
#define ISO_H_VERSION 1
#define ISO_H_DISP_SLEEPING 16
#define ISO_H_KICKS 33
#define ISO_H_PENDING 64

/* notification ring header, u64 words from the ring's header */
#define ISO_R_HEAD 0
#define ISO_R_SLEEPERS 1
#define ISO_R_TAIL 8
#define ISO_R_RUNG 9
#define ISO_R_SAVED 10
#define ISO_R_DROPPED 11

/* socket control page, u64 word indices */
#define ISO_C_CMD_TAIL 0
#define ISO_C_TX_TAIL 8
#define ISO_C_RX_HEAD 16
#define ISO_C_TX_WANT 24
#define ISO_C_DRAINING 32
#define ISO_C_TX_HEAD 40
#define ISO_C_RX_TAIL 41
#define ISO_C_STATE 48
#define ISO_C_ERR 49
#define ISO_C_RES_SEQ 50
#define ISO_C_RES_VAL 51
#define ISO_C_OWNER 52
#define ISO_C_RX_CPU 53
#define ISO_C_OPTVAL 54
#define ISO_C_ADDR_FAMILY 56
#define ISO_C_ADDR_PORT 57
#define ISO_C_ADDR_IP0 58
#define ISO_C_ADDR_IP1 59
#define ISO_C_NOTIF_RING 64
#define ISO_C_WATCH_ARMED 65

/* socket state bits (C_STATE, the dispatcher's) */
#define ISO_ST_OPEN (1u << 0)
#define ISO_ST_CONNECTING (1u << 1)
#define ISO_ST_CONNECTED (1u << 2)
#define ISO_ST_LISTENING (1u << 3)
#define ISO_ST_EOF (1u << 4)
#define ISO_ST_ERROR (1u << 5)
#define ISO_ST_CLOSED (1u << 6)
#define ISO_ST_TX_SHUT (1u << 7)
#define ISO_ST_ACCEPTABLE (1u << 8)

/* notification events */
#define ISO_EV_RX 1
#define ISO_EV_TX 2
#define ISO_EV_DONE 4
#define ISO_EV_ERR 8
#define ISO_EV_EOF 16
#define ISO_EV_ACCEPT 32

/* command opcodes */
#define ISO_OP_SOCKET 1
#define ISO_OP_BIND 2
#define ISO_OP_LISTEN 3
#define ISO_OP_ACCEPT 4
#define ISO_OP_CONNECT 5
#define ISO_OP_SEND 6
#define ISO_OP_SHUTDOWN 7
#define ISO_OP_CLOSE 8
#define ISO_OP_SETSOCKOPT 9
#define ISO_OP_GETSOCKNAME 10
#define ISO_OP_GETPEERNAME 11
#define ISO_OP_GETSOCKOPT 12

struct iso_geometry {
    uint64_t max_sockets, cmdq_slots, tx_size, rx_size, notif_slots, notif_rings;
};

static inline uint64_t iso_round(uint64_t n, uint64_t to) { return (n + to - 1) / to * to; }
static inline uint64_t iso_ring_word(const struct iso_geometry *g, uint64_t r)
{
    (void)g;
    return (ISO_HEADER_SIZE + r * ISO_RING_HDR) / 8;
}
static inline uint64_t iso_ring_bytes(const struct iso_geometry *g) { return iso_round(g->notif_slots * 16, ISO_PAGE); }
static inline uint64_t iso_ring_off(const struct iso_geometry *g, uint64_t r)
{
    return ISO_HEADER_SIZE + iso_round(g->notif_rings * ISO_RING_HDR, ISO_PAGE) + r * iso_ring_bytes(g);
}
static inline uint64_t iso_sock_base(const struct iso_geometry *g) { return iso_ring_off(g, g->notif_rings); }
static inline uint64_t iso_cmdq_bytes(const struct iso_geometry *g) { return iso_round(g->cmdq_slots * 64, ISO_PAGE); }
static inline uint64_t iso_sock_stride(const struct iso_geometry *g)
{
    return ISO_CONTROL_SIZE + iso_cmdq_bytes(g) + g->tx_size + g->rx_size;
}
static inline uint64_t iso_total_size(const struct iso_geometry *g)
{
    return iso_sock_base(g) + g->max_sockets * iso_sock_stride(g);
}
static inline uint64_t iso_control_off(const struct iso_geometry *g, uint64_t i)
{
    return iso_sock_base(g) + i * iso_sock_stride(g);
}
static inline uint64_t iso_cmdq_off(const struct iso_geometry *g, uint64_t i) { return iso_control_off(g, i) + ISO_CONTROL_SIZE; }
static inline uint64_t iso_tx_off(const struct iso_geometry *g, uint64_t i) { return iso_cmdq_off(g, i) + iso_cmdq_bytes(g); }
static inline uint64_t iso_rx_off(const struct iso_geometry *g, uint64_t i) { return iso_tx_off(g, i) + g->tx_size; }

static inline int iso_pow2(uint64_t n) { return n && !(n & (n - 1)); }

/* 0 when the dispatcher would accept the geometry (Geometry.from_dict / check), else -1 */
static inline int iso_geometry_check(const struct iso_geometry *g)
{
    if (g->max_sockets < 1 || g->max_sockets > ISO_MAX_SOCKETS_LIMIT)
        return -1;
    if (!iso_pow2(g->cmdq_slots) || g->cmdq_slots < 2 || g->cmdq_slots > 65536)
        return -1;
    if (!iso_pow2(g->notif_slots) || g->notif_slots < 2 || g->notif_slots > 65536)
        return -1;
    if (!iso_pow2(g->tx_size) || g->tx_size < ISO_PAGE || g->tx_size > (1u << 26))
        return -1;
    if (!iso_pow2(g->rx_size) || g->rx_size < ISO_PAGE || g->rx_size > (1u << 26))
        return -1;
    if (g->notif_rings < 1 || g->notif_rings > ISO_MAX_RINGS)
        return -1;
    return 0;
}

/* A command: the 48-byte body (bytes 16..63 of a queue slot); bytes 0..7 are the slot sequence, 8..15 the
 * position, both written by the producer's push (iso_abi_push). */
struct iso_command {
    uint16_t op, flags;
    uint32_t sock;
    uint64_t a, b, c;
    unsigned char ip[16];
};

static inline void iso_put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint64_t iso_get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static inline void iso_encode_body(unsigned char body[ISO_BODY_SIZE], const struct iso_command *c)
{
    body[0] = (unsigned char)c->op;
    body[1] = (unsigned char)(c->op >> 8);
    body[2] = (unsigned char)c->flags;
    body[3] = (unsigned char)(c->flags >> 8);
    for (int i = 0; i < 4; i++)
        body[4 + i] = (unsigned char)(c->sock >> (8 * i));
    iso_put64(body + 8, c->a);
    iso_put64(body + 16, c->b);
    iso_put64(body + 24, c->c);
    memcpy(body + 32, c->ip, 16);
}

/* A whole ready slot as the consumer reads it: sequence pos + 1, position pos, then the body. */
static inline void iso_encode_entry(unsigned char entry[ISO_ENTRY_SIZE], uint64_t pos, const struct iso_command *c)
{
    iso_put64(entry, pos + 1);
    iso_put64(entry + 8, pos);
    iso_encode_body(entry + 16, c);
}

static inline void iso_decode_entry(const unsigned char entry[ISO_ENTRY_SIZE], uint64_t *seq, uint64_t *pos,
                                    struct iso_command *c)
{
    *seq = iso_get64(entry);
    *pos = iso_get64(entry + 8);
    const unsigned char *b = entry + 16;
    c->op = (uint16_t)(b[0] | b[1] << 8);
    c->flags = (uint16_t)(b[2] | b[3] << 8);
    c->sock = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 | (uint32_t)b[7] << 24;
    c->a = iso_get64(b + 8);
    c->b = iso_get64(b + 16);
    c->c = iso_get64(b + 24);
    memcpy(c->ip, b + 32, 16);
}

/* A notification entry: socket u32, events u32, the socket's C_RES_SEQ u64. */
static inline void iso_encode_notif(unsigned char e[16], uint32_t sock, uint32_t events, uint64_t seq)
{
    for (int i = 0; i < 4; i++) {
        e[i] = (unsigned char)(sock >> (8 * i));
        e[4 + i] = (unsigned char)(events >> (8 * i));
    }
    iso_put64(e + 8, seq);
}

/* Vyukov bounded enqueue on a slot array in shared memory: the position, -1 when full, -2 when a producer or
 * consumer broke the sequence numbers (a bounded spin, as _atomics.c's iso_mpsc_push). */
static inline int64_t iso_abi_push(uint64_t *tail, unsigned char *slots, uint64_t nslots,
                                   const unsigned char body[ISO_BODY_SIZE])
{
    uint64_t mask = nslots - 1;
    uint64_t pos = __atomic_load_n(tail, __ATOMIC_RELAXED);
    for (uint32_t spins = 0; spins < 1000000u; spins++) {
        unsigned char *slot = slots + (pos & mask) * ISO_ENTRY_SIZE;
        uint64_t seq = __atomic_load_n((uint64_t *)slot, __ATOMIC_ACQUIRE);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (__atomic_compare_exchange_n(tail, &pos, pos + 1, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
                memcpy(slot + 16, body, ISO_BODY_SIZE);
                __atomic_store_n((uint64_t *)(slot + 8), pos, __ATOMIC_RELAXED);
                __atomic_store_n((uint64_t *)slot, pos + 1, __ATOMIC_RELEASE);
                return (int64_t)pos;
            }
        } else if (dif < 0) {
            return -1;
        } else {
            pos = __atomic_load_n(tail, __ATOMIC_RELAXED);
        }
    }
    return -2;
}

/* The attach request (attach.Hello.encode): JSON, the name limited to [A-Za-z0-9._:-] here so that it needs no
 * escaping.  Returns the length written (< cap), or -1 when it does not fit. */
static inline int iso_encode_hello(char *out, size_t cap, const struct iso_geometry *g, long pid, const char *name)
{
    char clean[65];
    size_t n = 0;
    for (; name[n] && n < 64; n++) {
        char ch = name[n];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                 ch == '_' || ch == ':' || ch == '-';
        clean[n] = ok ? ch : '_';
    }
    clean[n] = 0;
    int len = snprintf(out, cap,
                       "{\"type\": \"attach\", \"version\": %d, \"geometry\": {\"max_sockets\": %llu, "
                       "\"cmdq_slots\": %llu, \"tx_size\": %llu, \"rx_size\": %llu, \"notif_slots\": %llu, "
                       "\"notif_rings\": %llu}, \"pid\": %ld, \"name\": \"%s\"}",
                       ISO_VERSION, (unsigned long long)g->max_sockets, (unsigned long long)g->cmdq_slots,
                       (unsigned long long)g->tx_size, (unsigned long long)g->rx_size,
                       (unsigned long long)g->notif_slots, (unsigned long long)g->notif_rings, pid, clean);
    return len < 0 || (size_t)len >= cap ? -1 : len;
}

/* The value of top-level-ish key `key` in a flat JSON reply from isostackd (attach.encode_reply: json.dumps of a
 * dict whose values we read are strings, integers, booleans or null): a pointer to its first character, or
 * NULL.  Good enough for replies from isostackd, which we trust to be JSON; nothing here is executed. */
static inline const char *iso_json_value(const char *json, const char *key)
{
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\"", key);
    const char *p = strstr(json, pattern);
    if (!p)
        return NULL;
    p += strlen(pattern);
    while (*p == ' ')
        p++;
    if (*p != ':')
        return NULL;
    p++;
    while (*p == ' ')
        p++;
    return p;
}

/* Copy a JSON string value (no unescaping beyond \" and \\) into out; 0, or -1 when key is not a string. */
static inline int iso_json_string(const char *json, const char *key, char *out, size_t cap)
{
    const char *p = iso_json_value(json, key);
    if (!p || *p != '"' || cap == 0)
        return -1;
    p++;
    size_t n = 0;
    while (*p && *p != '"') {
        if (*p == '\\' && p[1])
            p++;
        if (n + 1 < cap)
            out[n++] = *p;
        p++;
    }
    out[n] = 0;
    return 0;
}

/* An integer value (0 when absent or null); a boolean counts as 0/1. */
static inline long long iso_json_int(const char *json, const char *key)
{
    const char *p = iso_json_value(json, key);
    if (!p)
        return 0;
    if (!strncmp(p, "true", 4))
        return 1;
    long long v = 0;
    int neg = *p == '-';
    if (neg)
        p++;
    while (*p >= '0' && *p <= '9')
        v = v * 10 + (*p++ - '0');
    return neg ? -v : v;
}

#endif

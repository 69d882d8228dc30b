/* The C side of the queue ABI vectors (tests/test_isostack_queue_abi.py drives it): one request per stdin line,
 * one answer per stdout line, every answer computed by isostack_abi.h, the encoder libisostack-preload uses.
 *
 *   geometry MS CQ TX RX NS NR I   -> total sock_base stride ring_off(0) ring_word(0) control cmdq tx rx (of I) check
 *   entry POS OP FLAGS SOCK A B C IPHEX -> the 64-byte ready slot, hex
 *   decode HEX                     -> seq pos op flags sock a b c iphex
 *   notif SOCK EVENTS SEQ          -> the 16-byte notification entry, hex
 *   hello MS CQ TX RX NS NR PID NAME -> the attach request (JSON)
 *   reply JSON                     -> type app instance membarrier message
 *   push PATH NSLOTS COUNT         -> a queue image (tail at 0, slots at 64) with COUNT SEND entries (a = 1000 + i);
 *                                     prints the position of every push (-1: full)
 */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "isostack_abi.h"

static void hex(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("%02x", p[i]);
    printf("\n");
}

static void unhex(const char *s, unsigned char *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v = 0;
        sscanf(s + 2 * i, "%2x", &v);
        out[i] = (unsigned char)v;
    }
}

int main(void)
{
    char line[8192];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        unsigned long long v[9] = {0};
        char word[4096] = "";
        if (!strncmp(line, "geometry ", 9)) {
            sscanf(line + 9, "%llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6]);
            struct iso_geometry g = {v[0], v[1], v[2], v[3], v[4], v[5]};
            printf("%llu %llu %llu %llu %llu %llu %llu %llu %llu %d\n", (unsigned long long)iso_total_size(&g),
                   (unsigned long long)iso_sock_base(&g), (unsigned long long)iso_sock_stride(&g),
                   (unsigned long long)iso_ring_off(&g, 0), (unsigned long long)iso_ring_word(&g, 0),
                   (unsigned long long)iso_control_off(&g, v[6]), (unsigned long long)iso_cmdq_off(&g, v[6]),
                   (unsigned long long)iso_tx_off(&g, v[6]), (unsigned long long)iso_rx_off(&g, v[6]),
                   iso_geometry_check(&g));
        } else if (!strncmp(line, "entry ", 6)) {
            sscanf(line + 6, "%llu %llu %llu %llu %llu %llu %llu %4095s", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], word);
            struct iso_command c = {(uint16_t)v[1], (uint16_t)v[2], (uint32_t)v[3], v[4], v[5], v[6], {0}};
            unhex(word, c.ip, 16);
            unsigned char e[ISO_ENTRY_SIZE];
            iso_encode_entry(e, v[0], &c);
            hex(e, sizeof e);
        } else if (!strncmp(line, "decode ", 7)) {
            unsigned char e[ISO_ENTRY_SIZE];
            unhex(line + 7, e, sizeof e);
            uint64_t seq, pos;
            struct iso_command c;
            iso_decode_entry(e, &seq, &pos, &c);
            printf("%llu %llu %u %u %u %llu %llu %llu ", (unsigned long long)seq, (unsigned long long)pos, c.op,
                   c.flags, c.sock, (unsigned long long)c.a, (unsigned long long)c.b, (unsigned long long)c.c);
            hex(c.ip, 16);
        } else if (!strncmp(line, "notif ", 6)) {
            sscanf(line + 6, "%llu %llu %llu", &v[0], &v[1], &v[2]);
            unsigned char e[16];
            iso_encode_notif(e, (uint32_t)v[0], (uint32_t)v[1], v[2]);
            hex(e, sizeof e);
        } else if (!strncmp(line, "hello ", 6)) {
            sscanf(line + 6, "%llu %llu %llu %llu %llu %llu %llu %4095s", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], word);
            struct iso_geometry g = {v[0], v[1], v[2], v[3], v[4], v[5]};
            char out[1024];
            if (iso_encode_hello(out, sizeof out, &g, (long)v[6], word) < 0)
                printf("too long\n");
            else
                printf("%s\n", out);
        } else if (!strncmp(line, "reply ", 6)) {
            const char *json = line + 6;
            char type[64] = "", message[512] = "";
            iso_json_string(json, "type", type, sizeof type);
            iso_json_string(json, "message", message, sizeof message);
            printf("%s %lld %lld %lld %s\n", type, iso_json_int(json, "app"), iso_json_int(json, "instance"),
                   iso_json_int(json, "membarrier"), message);
        } else if (!strncmp(line, "push ", 5)) {
            sscanf(line + 5, "%4095s %llu %llu", word, &v[0], &v[1]);
            size_t size = 64 + v[0] * ISO_ENTRY_SIZE;
            unsigned char *mem = calloc(1, size);
            for (uint64_t i = 0; i < v[0]; i++)
                iso_put64(mem + 64 + i * ISO_ENTRY_SIZE, i);
            for (uint64_t i = 0; i < v[1]; i++) {
                struct iso_command c = {ISO_OP_SEND, 0, 3, 1000 + i, 0, 0, {0}};
                unsigned char body[ISO_BODY_SIZE];
                iso_encode_body(body, &c);
                printf("%lld ", (long long)iso_abi_push((uint64_t *)mem, mem + 64, v[0], body));
            }
            printf("\n");
            int fd = open(word, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            if (fd < 0 || write(fd, mem, size) != (ssize_t)size)
                return 1;
            close(fd);
            free(mem);
        } else {
            printf("unknown request\n");
        }
        fflush(stdout);
    }
    return 0;
}

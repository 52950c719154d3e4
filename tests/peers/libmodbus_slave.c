/* An independent Modbus slave built on libmodbus (Debian's libmodbus-dev), on TCP or a serial line.
 *
 * libmodbus does the protocol (framing, unit ids, exception replies); the
 * register words are spelled out here with plain shifts, so the poller's
 * decoding is checked against a second statement of the byte orders, not
 * against our own simulator's encoder. (libmodbus's modbus_set_float_abcd()
 * and friends are not used: they fill host-order memory, and their meaning
 * changed between 3.1.6 and 3.1.8, libmodbus issues #611, #665.)
 * Holding and input registers hold the same words:
 *
 *   0..1   float 230.1   ABCD (A = most significant byte)
 *   2..3   float 230.1   CDAB
 *   4..5   float 230.1   BADC
 *   6..7   float 230.1   DCBA
 *   8      int16 -1234
 *   9..10  int32 -123456789, high word first
 *   11..12 uint32 4000000000, low word first (CDAB)
 *   13..16 float64 -12345.678, ABCD
 *
 * Usage: libmodbus_slave PORT                   Modbus TCP on 127.0.0.1:PORT, any unit id
 *        libmodbus_slave rtu DEVICE BAUD UNIT   Modbus RTU, 8N1, on a serial device (a pty end),
 *                                               answering unit UNIT only, as a device on a bus does
 * Either prints "ready" once it listens, and serves until killed.
 */
#include <errno.h>
#include <modbus/modbus.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint16_t swap16(uint16_t w) { return (uint16_t)((w << 8) | (w >> 8)); }

static int serve_rtu(modbus_t *ctx, modbus_mapping_t *map) {
    if (modbus_connect(ctx) == -1) {
        fprintf(stderr, "open: %s\n", modbus_strerror(errno));
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    uint8_t query[MODBUS_RTU_MAX_ADU_LENGTH];
    for (;;) {
        int n = modbus_receive(ctx, query); /* 0: a frame for another unit, ignored */
        if (n > 0) {
            modbus_reply(ctx, query, n, map);
        } else if (n == -1 && (errno == EBADF || errno == EIO)) {
            return 1; /* the line is gone */
        } /* other errors (a bad CRC, a short frame): libmodbus flushed the line; wait for the next */
    }
}

int main(int argc, char **argv) {
    int rtu = argc == 5 && strcmp(argv[1], "rtu") == 0;
    if (argc != 2 && !rtu) {
        fprintf(stderr, "usage: %s PORT | %s rtu DEVICE BAUD UNIT\n", argv[0], argv[0]);
        return 2;
    }
    modbus_t *ctx = rtu ? modbus_new_rtu(argv[2], atoi(argv[3]), 'N', 8, 1)
                        : modbus_new_tcp("127.0.0.1", atoi(argv[1]));
    modbus_mapping_t *map = modbus_mapping_new(0, 0, 32, 32);
    if (ctx == NULL || map == NULL) {
        fprintf(stderr, "libmodbus: %s\n", modbus_strerror(errno));
        return 1;
    }
    if (rtu && modbus_set_slave(ctx, atoi(argv[4])) == -1) {
        fprintf(stderr, "unit: %s\n", modbus_strerror(errno));
        return 1;
    }
    uint16_t *regs[2] = {map->tab_registers, map->tab_input_registers};
    for (int t = 0; t < 2; t++) {
        uint16_t *r = regs[t];
        float f = 230.1f;
        uint32_t bits;
        memcpy(&bits, &f, sizeof bits);
        uint16_t hi = (uint16_t)(bits >> 16), lo = (uint16_t)(bits & 0xFFFF);
        r[0] = hi;          r[1] = lo;           /* ABCD */
        r[2] = lo;          r[3] = hi;           /* CDAB */
        r[4] = swap16(hi);  r[5] = swap16(lo);   /* BADC */
        r[6] = swap16(lo);  r[7] = swap16(hi);   /* DCBA */
        r[8] = (uint16_t)(int16_t)-1234;
        uint32_t i32 = (uint32_t)(int32_t)-123456789;
        r[9] = (uint16_t)(i32 >> 16);
        r[10] = (uint16_t)(i32 & 0xFFFF);
        uint32_t u32 = 4000000000u;
        r[11] = (uint16_t)(u32 & 0xFFFF);
        r[12] = (uint16_t)(u32 >> 16);
        double d = -12345.678;
        uint64_t dbits;
        memcpy(&dbits, &d, sizeof dbits);
        for (int i = 0; i < 4; i++) {
            r[13 + i] = (uint16_t)(dbits >> (48 - 16 * i));
        }
    }
    if (rtu) {
        return serve_rtu(ctx, map);
    }
    int server = modbus_tcp_listen(ctx, 4);
    if (server < 0) {
        fprintf(stderr, "listen: %s\n", modbus_strerror(errno));
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        modbus_tcp_accept(ctx, &server);
        uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
        for (;;) {
            int n = modbus_receive(ctx, query);
            if (n > 0) {
                modbus_reply(ctx, query, n, map);
            } else if (n == -1) {
                break; /* connection closed: wait for the next one */
            }
        }
        close(modbus_get_socket(ctx));
    }
}

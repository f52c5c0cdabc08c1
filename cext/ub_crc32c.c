/* ub_crc32c.c -- CRC32C (Castagnoli polynomial 0x82F63B78, reflected).
 *
 * Two paths: the SSE4.2 crc32 instruction (8 bytes per instruction, chosen at
 * run time with __builtin_cpu_supports so one binary runs everywhere), and a
 * slicing-by-8 table for CPUs without it (or UB_NO_SSE42 builds). The tables
 * are filled by a constructor before any thread can call in.
 *
 * ub_crc32c_copy() computes the CRC while copying: a catch-up read verifies
 * every payload's checksum and copies it out in the same pass over memory.
 */
#include <string.h>
#include "ub_crc32c.h"

#if (defined(__x86_64__) || defined(__i386__)) && !defined(UB_NO_SSE42)
#define UB_HAVE_SSE42_PATH 1
#include <nmmintrin.h>
#endif

#define POLY 0x82F63B78u
#define MASK_DELTA 0xa282ead8u

static uint32_t table[8][256];
static int use_hw;

__attribute__((constructor)) static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
#ifdef UB_HAVE_SSE42_PATH
    __builtin_cpu_init();
    use_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

uint32_t ub_crc32c_sw(uint32_t crc, const uint8_t *buf, size_t len)
{
    uint32_t c = ~crc;
    while (len && ((uintptr_t)buf & 7)) {
        c = table[0][(c ^ *buf++) & 0xff] ^ (c >> 8);
        len--;
    }
    while (len >= 8) {
        uint64_t v = load64(buf) ^ c;
        c = table[7][v & 0xff] ^ table[6][(v >> 8) & 0xff] ^
            table[5][(v >> 16) & 0xff] ^ table[4][(v >> 24) & 0xff] ^
            table[3][(v >> 32) & 0xff] ^ table[2][(v >> 40) & 0xff] ^
            table[1][(v >> 48) & 0xff] ^ table[0][v >> 56];
        buf += 8;
        len -= 8;
    }
    while (len--)
        c = table[0][(c ^ *buf++) & 0xff] ^ (c >> 8);
    return ~c;
}

#ifdef UB_HAVE_SSE42_PATH
__attribute__((target("sse4.2")))
static uint32_t crc_hw(uint32_t crc, const uint8_t *buf, size_t len)
{
    uint64_t c = ~crc;
    while (len && ((uintptr_t)buf & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *buf++);
        len--;
    }
    while (len >= 8) {
        c = _mm_crc32_u64(c, load64(buf));
        buf += 8;
        len -= 8;
    }
    while (len--)
        c = _mm_crc32_u8((uint32_t)c, *buf++);
    return ~(uint32_t)c;
}

__attribute__((target("sse4.2")))
static uint32_t crc_copy_hw(uint32_t crc, uint8_t *dst, const uint8_t *src, size_t len)
{
    uint64_t c = ~crc;
    while (len >= 8) {
        uint64_t v = load64(src);
        c = _mm_crc32_u64(c, v);
        memcpy(dst, &v, 8);
        src += 8;
        dst += 8;
        len -= 8;
    }
    while (len--) {
        c = _mm_crc32_u8((uint32_t)c, *src);
        *dst++ = *src++;
    }
    return ~(uint32_t)c;
}
#endif

uint32_t ub_crc32c_extend(uint32_t crc, const uint8_t *buf, size_t len)
{
#ifdef UB_HAVE_SSE42_PATH
    if (use_hw)
        return crc_hw(crc, buf, len);
#endif
    return ub_crc32c_sw(crc, buf, len);
}

uint32_t ub_crc32c_copy(uint32_t crc, uint8_t *dst, const uint8_t *src, size_t len)
{
#ifdef UB_HAVE_SSE42_PATH
    if (use_hw)
        return crc_copy_hw(crc, dst, src, len);
#endif
    memcpy(dst, src, len);
    return ub_crc32c_sw(crc, src, len);
}

uint32_t ub_crc32c(const uint8_t *buf, size_t len)
{
    return ub_crc32c_extend(0, buf, len);
}

uint32_t ub_crc_mask(uint32_t crc)
{
    return ((crc >> 15) | (crc << 17)) + MASK_DELTA;
}

uint32_t ub_crc_unmask(uint32_t masked)
{
    uint32_t rot = masked - MASK_DELTA;
    return (rot >> 17) | (rot << 15);
}

int ub_crc32c_hw(void)
{
    return use_hw;
}

/* ub_crc32c.h -- CRC32C (Castagnoli), hardware instruction where the CPU has
 * it (SSE4.2 crc32 on x86-64, chosen once at run time), table fallback elsewhere.
 * Check value: ub_crc32c(0, "123456789", 9) == 0xE3069283.
 *
 * Stored CRCs are masked (LevelDB's util/crc32c.h): computing the CRC of a
 * string that itself contains embedded CRCs is problematic, so what lands on
 * disk is rotate-right-15 of the CRC plus a constant.
 */
#ifndef UB_CRC32C_H
#define UB_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t ub_crc32c_extend(uint32_t crc, const uint8_t *buf, size_t len);
uint32_t ub_crc32c(const uint8_t *buf, size_t len);
uint32_t ub_crc32c_sw(uint32_t crc, const uint8_t *buf, size_t len);
/* CRC of src while copying it to dst (one pass over memory). */
uint32_t ub_crc32c_copy(uint32_t crc, uint8_t *dst, const uint8_t *src, size_t len);
uint32_t ub_crc_mask(uint32_t crc);
uint32_t ub_crc_unmask(uint32_t masked);
/* 1 when the hardware path is in use. */
int ub_crc32c_hw(void);

#endif

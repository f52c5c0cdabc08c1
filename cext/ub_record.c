/* ub_record.c -- record framing.
 *
 * Strategy (the same contract as h11's _readers.py): a decoder is a function
 * that takes (buf, len, pos) and either returns a record, returns UB_ENEEDMORE
 * (the buffer ends inside the record), or returns UB_ECORRUPT with a named
 * reason. It never reads outside buf[0, len) and never trusts a length it
 * read: every length is bounded by the format's limits and by the buffer
 * before it is used, and the CRC covers the lengths themselves.
 */
#include <string.h>
#include "ub_record.h"
#include "ub_crc32c.h"
#include "ub_errors.h"
#include "ub_format.h"

static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

uint64_t ub_record_size(size_t attrs_len, size_t payload_len)
{
    return (uint64_t)UB_REC_HEADER_SIZE + attrs_len + payload_len;
}

int ub_record_encode(uint8_t *buf, size_t cap, uint32_t type, uint32_t msg_count,
                     const uint8_t *attrs, size_t attrs_len,
                     const uint8_t *payload, size_t payload_len, size_t *written)
{
    if (type == UB_REC_ZERO || type > UB_REC_MAX_TYPE)
        return UB_EINVAL;
    if (attrs_len > UB_MAX_ATTRS || payload_len > UB_MAX_PAYLOAD)
        return UB_ETOOBIG;
    uint64_t size = ub_record_size(attrs_len, payload_len);
    if (size > cap)
        return UB_ENOSPACE;
    put32(buf + 4, (uint32_t)payload_len);
    buf[8] = (uint8_t)attrs_len;
    buf[9] = (uint8_t)(attrs_len >> 8);
    buf[UB_REC_TYPE_POS] = (uint8_t)type;
    buf[UB_REC_TYPE_POS + 1] = 0;
    put32(buf + 12, msg_count);
    if (attrs_len)
        memcpy(buf + UB_REC_HEADER_SIZE, attrs, attrs_len);
    if (payload_len)
        memcpy(buf + UB_REC_HEADER_SIZE + attrs_len, payload, payload_len);
    put32(buf, ub_crc_mask(ub_crc32c(buf + 4, (size_t)size - 4)));
    *written = (size_t)size;
    return UB_OK;
}

/* Header checks shared by decode and by the segment's fast paths. Returns
 * UB_OK with the record's geometry filled in (CRC not yet checked). */
int ub_record_peek(const uint8_t *buf, size_t len, size_t pos, ub_record *out,
                   const char **reason)
{
    if (pos > len || len - pos < UB_REC_HEADER_SIZE)
        return UB_ENEEDMORE;
    const uint8_t *h = buf + pos;
    uint32_t payload_len = get32(h + 4);
    uint32_t attrs_len = (uint32_t)h[8] | (uint32_t)h[9] << 8;
    uint32_t type = h[UB_REC_TYPE_POS];
    if (type == UB_REC_ZERO) {
        static const uint8_t zero[UB_REC_HEADER_SIZE];
        *reason = memcmp(h, zero, UB_REC_HEADER_SIZE) ? "bad record type" : "zero header";
        return UB_ECORRUPT;
    }
    if (type > UB_REC_MAX_TYPE || h[UB_REC_TYPE_POS + 1] != 0) {
        *reason = "bad record type";
        return UB_ECORRUPT;
    }
    if (payload_len > UB_MAX_PAYLOAD) {
        *reason = "bad record length";
        return UB_ECORRUPT;
    }
    uint64_t size = ub_record_size(attrs_len, payload_len);
    if (size > len - pos)
        return UB_ENEEDMORE;
    out->type = type;
    out->msg_count = get32(h + 12);
    out->attrs_pos = pos + UB_REC_HEADER_SIZE;
    out->attrs_len = attrs_len;
    out->payload_pos = pos + UB_REC_HEADER_SIZE + attrs_len;
    out->payload_len = payload_len;
    out->next = pos + size;
    return UB_OK;
}

int ub_record_decode(const uint8_t *buf, size_t len, size_t pos, ub_record *out,
                     const char **reason)
{
    int rc = ub_record_peek(buf, len, pos, out, reason);
    if (rc != UB_OK)
        return rc;
    uint32_t want = ub_crc_unmask(get32(buf + pos));
    if (ub_crc32c(buf + pos + 4, (size_t)(out->next - pos - 4)) != want) {
        *reason = "checksum mismatch";
        return UB_ECORRUPT;
    }
    return UB_OK;
}

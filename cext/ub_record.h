/* ub_record.h -- pure record framing: bytes in, bytes out, no I/O. */
#ifndef UB_RECORD_H
#define UB_RECORD_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t type;
    uint32_t msg_count;
    uint64_t attrs_pos;    /* position of the attrs in the buffer */
    uint32_t attrs_len;
    uint64_t payload_pos;  /* position of the payload in the buffer */
    uint32_t payload_len;
    uint64_t next;         /* position after the record */
} ub_record;

/* Bytes a record with these sizes occupies. */
uint64_t ub_record_size(size_t attrs_len, size_t payload_len);

/* Frame one record into buf[0, cap). Returns UB_OK and sets *written, or
 * UB_EINVAL (bad type), UB_ETOOBIG (over the limits), UB_ENOSPACE (cap). */
int ub_record_encode(uint8_t *buf, size_t cap, uint32_t type, uint32_t msg_count,
                     const uint8_t *attrs, size_t attrs_len,
                     const uint8_t *payload, size_t payload_len, size_t *written);

/* Decode the record at buf[pos, len). Returns UB_OK with *out filled,
 * UB_ENEEDMORE when the buffer ends inside the record, or UB_ECORRUPT with
 * *reason set to a static string ("checksum mismatch", "bad record length",
 * "bad record type", "zero header"). Never reads outside buf[0, len). */
int ub_record_decode(const uint8_t *buf, size_t len, size_t pos, ub_record *out,
                     const char **reason);

/* Bounds and type checks of the header at pos without the CRC (used by the
 * segment's scans, which verify the CRC in the same pass as a copy). */
int ub_record_peek(const uint8_t *buf, size_t len, size_t pos, ub_record *out,
                   const char **reason);

#endif

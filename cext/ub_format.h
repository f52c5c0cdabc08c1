/* ub_format.h -- the single source of truth for Unbroken's on-disk layout.
 * docs/format.md describes the same thing in prose; keep them together.
 *
 * Segment file  = header (UB_SEG_HEADER_SIZE bytes) + records + zero tail.
 * Segment header (little endian):
 *     0  magic       8 bytes  "UBSEGv1\n"
 *     8  version     u32      UB_FORMAT_VERSION
 *    12  header size u32      UB_SEG_HEADER_SIZE
 *    16  base offset u64      log offset of the first record
 *    24  base msg    u64      number of messages in the log before this segment
 *    32  created ms  u64      wall clock at creation (retention by age)
 *    40  reserved    20 bytes zero
 *    60  crc         u32      masked CRC32C of bytes [0, 60)
 *
 * Record (little endian), starting at any record boundary:
 *     0  crc         u32      masked CRC32C of bytes [4, 16 + attrs + payload)
 *     4  payload len u32
 *     8  attrs len   u16
 *    10  type        u8       UB_REC_* (at UB_REC_TYPE_POS)
 *    11  flags       u8       zero (reserved)
 *    12  msg count   u32      messages carried by the payload
 *    16  attrs       attrs len bytes (a small msgpack map, opaque to C)
 *        payload     payload len bytes
 *
 * The CRC covers the length fields too, so a damaged length is caught by the
 * checksum instead of being trusted (LevelDB covers type and payload only).
 * A log offset is base offset + (position - UB_SEG_HEADER_SIZE): offsets are
 * contiguous across segments and each one is a record boundary.
 */
#ifndef UB_FORMAT_H
#define UB_FORMAT_H

#include <stdint.h>

#define UB_SEG_MAGIC "UBSEGv1\n"
#define UB_IDX_MAGIC "UBIDXv1\n"
#define UB_MAGIC_SIZE 8
#define UB_FORMAT_VERSION 1
#define UB_SEG_HEADER_SIZE 64
#define UB_SEG_HEADER_CRC_POS 60
#define UB_REC_HEADER_SIZE 16
#define UB_REC_TYPE_POS 10     /* the type byte; the flags byte follows it */
#define UB_IDX_HEADER_SIZE 64
#define UB_IDX_HEADER_CRC_POS 60
#define UB_IDX_ENTRY_SIZE 8

/* Record types. 0 is never written: a zero-filled header is "no record". */
#define UB_REC_ZERO 0
#define UB_REC_DATA 1        /* payload carries messages */
#define UB_REC_DATA_CLOSE 2  /* payload, and the stream is closed after it */
#define UB_REC_CLOSE 3       /* close marker, empty payload */
#define UB_REC_CHECKPOINT 4  /* control record (producer checkpoint), no messages */
#define UB_REC_MAX_TYPE 4

#define UB_MAX_ATTRS 65535u
/* Largest payload one record may carry: 256 MiB. A record larger than the
 * segment size gets a segment of its own; above this it is refused. */
#define UB_MAX_PAYLOAD (256u * 1024u * 1024u)
#define UB_MAX_RECORD (UB_REC_HEADER_SIZE + UB_MAX_ATTRS + UB_MAX_PAYLOAD)

#define UB_DEFAULT_SEGMENT_SIZE (64u * 1024u * 1024u)
#define UB_DEFAULT_INDEX_INTERVAL 4096u
/* Active segments grow in steps (posix_fallocate), starting here and doubling,
 * so a thousand small streams do not reserve a thousand full segments. */
#define UB_INITIAL_ALLOC (64u * 1024u)

#endif

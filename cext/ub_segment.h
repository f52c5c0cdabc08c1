/* ub_segment.h -- one segment file: create/open with preallocation, mmap,
 * append, scan/recover, read with CRC checks, sparse index, seal, close.
 *
 * Concurrency contract: at most one thread appends/seals/truncates a segment at
 * a time (the caller's append lock). Readers may run in other threads at the
 * same time: the end position and the index length are published with release
 * stores after the bytes they cover are written, and the index array never
 * moves (it is sized for the whole segment when the segment is opened).
 * Closing while another call is in flight is the caller's bug to prevent.
 */
#ifndef UB_SEGMENT_H
#define UB_SEGMENT_H

#include <stddef.h>
#include <stdint.h>
#include "ub_record.h"

typedef struct ub_segment ub_segment;

typedef struct {
    uint64_t base_offset;
    uint64_t base_msg;
    uint64_t created_ms;
    uint64_t end;          /* position after the last record */
    uint64_t capacity;     /* largest size this segment may reach */
    uint64_t alloc;        /* bytes preallocated in the file so far */
    uint64_t records;
    uint64_t messages;
    uint32_t last_type;    /* type of the last record, UB_REC_ZERO if none */
    uint32_t index_entries;
    int sealed;
    int os_errno;          /* errno of the last failed system call */
} ub_segment_info;

typedef struct {
    uint64_t valid_end;    /* position after the last valid record */
    uint64_t bytes_cut;    /* non-zero bytes of a torn tail that were cut */
    uint64_t records;
    uint64_t bad_pos;      /* UB_ECORRUPT: position of the bad record */
    const char *reason;    /* UB_ECORRUPT: static string naming the damage */
    int index_rebuilt;     /* sealed segment: the .idx was missing or bad */
    int os_errno;
} ub_scan_result;

typedef struct {
    uint64_t next;         /* position after the last record consumed */
    uint64_t bytes;        /* bytes written to out */
    uint64_t records;
    uint64_t messages;
    uint64_t need;         /* >0: the first record needs this much room in out */
    uint32_t closed;       /* a close record was consumed (nothing follows) */
    uint32_t json_started; /* in/out: JSON mode, an element was already written */
    uint64_t bad_pos;
    const char *reason;
} ub_read_result;

/* Open modes */
#define UB_OPEN_SEALED 0   /* strict: every byte must be a valid record */
#define UB_OPEN_ACTIVE 1   /* torn tail is cut; damage before valid data is an error */
#define UB_OPEN_REPAIR 2   /* active, and cut at the first bad record regardless */

int ub_segment_create(const char *path, uint64_t base_offset, uint64_t base_msg,
                      uint64_t created_ms, uint64_t capacity,
                      uint32_t index_interval, ub_segment **out, int *os_errno);
int ub_segment_open(const char *path, const char *idx_path, int mode,
                    uint64_t capacity, uint32_t index_interval,
                    ub_segment **out, ub_scan_result *res);
void ub_segment_info_get(const ub_segment *s, ub_segment_info *info);
uint64_t ub_segment_end(const ub_segment *s);

/* Append one record. UB_ENOSPACE when it does not fit in the capacity (roll),
 * UB_EFULL when the disk refuses to grow the file; nothing is written then. */
int ub_segment_append(ub_segment *s, uint32_t type, uint32_t msg_count,
                      const uint8_t *attrs, size_t attrs_len,
                      const uint8_t *payload, size_t payload_len, uint64_t *end);
/* Append n data records (one message each, no attrs) whose payloads lie back to
 * back in payloads, lens[i] bytes each. Appends as many as fit and sets *done;
 * returns UB_ENOSPACE when not all fit (the caller rolls and continues). */
int ub_segment_append_batch(ub_segment *s, const uint8_t *payloads,
                            const uint32_t *lens, size_t n, size_t *done,
                            uint64_t *end);

/* fdatasync; a sealed segment synced here then releases its fd. */
int ub_segment_sync(ub_segment *s);
/* Seal: cut the file to its end, write the index to idx_path, and (sync != 0)
 * fdatasync it. Unsynced, the segment keeps its fd until ub_segment_sync. */
int ub_segment_seal(ub_segment *s, const char *idx_path, int sync);
/* Cut an active segment back to pos (a record boundary). */
int ub_segment_truncate(ub_segment *s, uint64_t pos);

/* UB_OK when pos is a record boundary in [header, end], UB_ERANGE when it is
 * not, UB_ECORRUPT (with *bad_pos and *reason) when a record on the way from
 * the nearest index entry fails its CRC. */
int ub_segment_check_boundary(const ub_segment *s, uint64_t pos, uint64_t *bad_pos,
                              const char **reason);
/* Gather payloads of the records from pos (a boundary) up to limit (<= end)
 * into out[0, cap), verifying each CRC, stopping on a record boundary. In JSON
 * mode (json != 0) payloads are joined with ',' and empty ones skipped. */
int ub_segment_read(const ub_segment *s, uint64_t pos, uint64_t limit,
                    uint8_t *out, size_t cap, int json, ub_read_result *r);
/* Decode and verify the record at pos (a boundary) without copying; damage
 * is reported through *bad_pos and *reason. */
int ub_segment_record_at(const ub_segment *s, uint64_t pos, ub_record *rec,
                         uint64_t *bad_pos, const char **reason);
/* Find the record holding the msg_rel-th message of this segment (0-based):
 * its position and the number of messages in the segment before it.
 * UB_ERANGE when there is no such message; damage as for record_at. */
int ub_segment_find_msg(const ub_segment *s, uint64_t msg_rel, uint64_t *rec_pos,
                        uint64_t *rec_first_msg, uint64_t *bad_pos,
                        const char **reason);
/* Base address of the mapping, for zero-copy views of records. */
const uint8_t *ub_segment_data(const ub_segment *s);
void ub_segment_close(ub_segment *s);

/* Fault injection, for tests only (tests/faults/); inert unless called.
 * The next n fdatasync calls of ub_segment_sync/ub_segment_seal fail with EIO,
 * resp. the next n posix_fallocate calls (create, growth) fail with ENOSPC.
 * Process-wide; n <= 0 disarms. Returns how many were still pending.
 * ub_test_sync_count: fdatasync calls of ub_segment_sync/ub_segment_seal made
 * by this process so far (failed ones included). */
int ub_test_fail_next_sync(int n);
int ub_test_fail_next_alloc(int n);
uint64_t ub_test_sync_count(void);

#endif

/* ub_segment.c -- one segment file of a stream's log.
 *
 * Layout: see ub_format.h. A segment is created with its header and a first
 * preallocated chunk (posix_fallocate), and mapped MAP_SHARED for its whole
 * capacity at once; the file then grows in doubling steps, again with
 * posix_fallocate, so the mapping never moves and a full disk shows up as
 * UB_EFULL from the append that needed the room -- never as SIGBUS on a page
 * the kernel could not back. Only bytes below the allocated size are touched.
 *
 * Recovery (ub_segment_open on an active segment) scans every record from the
 * header, verifying each CRC and rebuilding the sparse index in the same pass.
 * Where the scan stops before the end of the file:
 *   - only zero bytes follow: the normal end of a preallocated segment;
 *   - non-zero bytes follow but no valid record starts anywhere in them: a torn
 *     tail (a write cut by a crash); it is zeroed and reported as bytes cut;
 *   - a valid record starts somewhere after the bad one: the damage sits
 *     before data that may have been acknowledged, so it is UB_ECORRUPT with
 *     the position and reason, unless the caller asked for UB_OPEN_REPAIR.
 * A sealed segment must hold valid records up to its exact file size.
 *
 * Sparse index: an entry (position, messages before it) for the first record
 * at least `interval` bytes after the previous entry; entry 0 is the header.
 * It proves an offset is a record boundary (floor entry, then hop headers)
 * and finds the N-th message. The array is sized for the whole capacity when
 * the segment is opened and never moves, so readers in other threads can use
 * it while the writer appends (the count is published with a release store).
 *
 * Why the warm-section search: (adapted from Kafka's OffsetIndex) readers are
 * almost always near the tail -- live readers and appends' own boundary
 * checks -- so the last few KiB of entries are hot in cache while a plain
 * binary search would touch cold entries at the middle of the array on every
 * lookup. We first search the last UB_WARM_ENTRIES entries, and only fall back
 * to the whole array when the target lies before them.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ub_crc32c.h"
#include "ub_errors.h"
#include "ub_format.h"
#include "ub_record.h"
#include "ub_segment.h"

#define UB_WARM_ENTRIES 1024 /* 8 KiB of index entries */
#define UB_MAX_CAPACITY 0xFFFFFFF0ull /* positions are stored as u32 */

typedef struct {
    uint32_t pos; /* position of a record in the segment */
    uint32_t msg; /* messages in the segment before that record */
} ub_entry;

struct ub_segment {
    int fd;
    int sealed;
    int os_errno;
    uint8_t *map;
    uint64_t map_len;
    uint64_t capacity;
    uint64_t alloc;
    uint64_t end; /* published with a release store */
    uint64_t base_offset, base_msg, created_ms;
    uint64_t records, messages;
    uint32_t last_type;
    uint32_t interval;
    uint64_t last_entry_pos;
    ub_entry *idx;
    uint32_t idx_cap;
    uint32_t idx_len; /* published with a release store */
    /* Written by ub_segment_sync/seal only (the caller's flush lock): where
     * the last successful fdatasync reached, and whether one failed since. */
    uint64_t synced;
    int sync_failed;
};

/* ---- little-endian helpers ------------------------------------------- */

static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static inline void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

static inline uint64_t load_end(const ub_segment *s)
{
    return __atomic_load_n(&s->end, __ATOMIC_ACQUIRE);
}

static inline uint32_t load_idx_len(const ub_segment *s)
{
    return __atomic_load_n(&s->idx_len, __ATOMIC_ACQUIRE);
}

static int io_error(ub_segment *s, int err)
{
    if (s)
        s->os_errno = err;
    return (err == ENOSPC || err == EDQUOT) ? UB_EFULL : UB_EIO;
}

/* ---- test switches ------------------------------------------------------
 * For the fault-injection tests only (tests/faults/test_io_errors.py). Always
 * compiled, inert unless called: each counter starts at zero, and a system
 * call takes one pending failure (atomically, so any thread may arm them)
 * only while its counter is positive.
 *   ub_test_fail_next_sync(n):  the next n fdatasync calls of ub_segment_sync
 *                               and ub_segment_seal fail with EIO (the disk is
 *                               not touched);
 *   ub_test_fail_next_alloc(n): the next n posix_fallocate calls (segment
 *                               creation and growth) fail with ENOSPC.
 * Each returns how many failures of its kind were still pending, so
 * ub_test_fail_next_sync(0) disarms and tells whether the armed ones struck.
 *   ub_test_sync_count():       how many fdatasync calls ub_segment_sync and
 *                               ub_segment_seal have made in this process
 *                               (failed ones included), for the tests of the
 *                               durability policies (tests/engine/). */

static int fail_sync_left;
static int fail_alloc_left;
static uint64_t sync_calls;

static int arm(int *left, int n)
{
    return __atomic_exchange_n(left, n > 0 ? n : 0, __ATOMIC_SEQ_CST);
}

int ub_test_fail_next_sync(int n)
{
    return arm(&fail_sync_left, n);
}

int ub_test_fail_next_alloc(int n)
{
    return arm(&fail_alloc_left, n);
}

uint64_t ub_test_sync_count(void)
{
    return __atomic_load_n(&sync_calls, __ATOMIC_SEQ_CST);
}

static int take_failure(int *left)
{
    int v = __atomic_load_n(left, __ATOMIC_RELAXED);
    while (v > 0)
        if (__atomic_compare_exchange_n(left, &v, v - 1, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_RELAXED))
            return 1;
    return 0;
}

static int seg_fdatasync(int fd)
{
    __atomic_add_fetch(&sync_calls, 1, __ATOMIC_SEQ_CST);
    if (take_failure(&fail_sync_left)) {
        errno = EIO;
        return -1;
    }
    return fdatasync(fd);
}

static int seg_fallocate(int fd, off_t offset, off_t len)
{
    if (take_failure(&fail_alloc_left))
        return ENOSPC;
    return posix_fallocate(fd, offset, len);
}

/* ---- index ------------------------------------------------------------ */

static int index_alloc(ub_segment *s, uint64_t entries)
{
    if (entries > UINT32_MAX)
        return UB_EINVAL;
    s->idx = calloc((size_t)entries, sizeof(ub_entry));
    if (!s->idx)
        return UB_ENOMEM;
    s->idx_cap = (uint32_t)entries;
    return UB_OK;
}

static void index_reset(ub_segment *s)
{
    s->idx[0].pos = UB_SEG_HEADER_SIZE;
    s->idx[0].msg = 0;
    s->last_entry_pos = UB_SEG_HEADER_SIZE;
    __atomic_store_n(&s->idx_len, 1, __ATOMIC_RELEASE);
}

/* Called with the record at pos about to be published. */
static void index_note(ub_segment *s, uint64_t pos, uint64_t msgs_before)
{
    if (pos - s->last_entry_pos < s->interval || s->idx_len >= s->idx_cap)
        return;
    s->idx[s->idx_len].pos = (uint32_t)pos;
    s->idx[s->idx_len].msg = (uint32_t)msgs_before;
    s->last_entry_pos = pos;
    __atomic_store_n(&s->idx_len, s->idx_len + 1, __ATOMIC_RELEASE);
}

/* Index of the last entry whose key (pos or msg) is <= target. */
static uint32_t index_floor(const ub_segment *s, uint64_t target, int by_msg)
{
    uint32_t n = load_idx_len(s);
    uint32_t lo = 0, hi = n; /* answer in [lo, hi) */
    if (n > UB_WARM_ENTRIES) {
        uint32_t w = n - UB_WARM_ENTRIES;
        uint64_t key = by_msg ? s->idx[w].msg : s->idx[w].pos;
        if (key <= target)
            lo = w;
        else
            hi = w;
    }
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        uint64_t key = by_msg ? s->idx[mid].msg : s->idx[mid].pos;
        if (key <= target)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* ---- scanning ---------------------------------------------------------- */

static int all_zero(const uint8_t *p, uint64_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        if (*p++)
            return 0;
        n--;
    }
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        if (v)
            return 0;
        p += 8;
        n -= 8;
    }
    while (n--)
        if (*p++)
            return 0;
    return 1;
}

/* Is there a valid record starting anywhere in (from, to)? Only used after a
 * scan stopped on damage, to tell a torn tail from damage before valid data. */
static int valid_record_after(const uint8_t *map, uint64_t from, uint64_t to)
{
    for (uint64_t p = from + 1; p + UB_REC_HEADER_SIZE <= to; p++) {
        uint8_t type = map[p + UB_REC_TYPE_POS];
        if (type == UB_REC_ZERO || type > UB_REC_MAX_TYPE || map[p + 11] != 0)
            continue;
        ub_record rec;
        const char *why;
        if (ub_record_decode(map, (size_t)to, (size_t)p, &rec, &why) == UB_OK)
            return 1;
    }
    return 0;
}

/* The signature of an append cut short by a process crash: append_one writes
 * the CRC last, so its field is still zero, the header is plausible, and only
 * zeros follow where the record claims to end. Whatever its half-copied
 * payload holds (even bytes that look like records) is then not data after
 * the damage. A complete record whose length was damaged has a non-zero CRC,
 * so it is still searched past and reported. */
static int write_in_progress(const ub_segment *s, uint64_t pos)
{
    ub_record rec;
    const char *why;
    /* peek first: it proves pos + UB_REC_HEADER_SIZE <= alloc before the CRC
     * field is read (the scan may stop 1-3 bytes before the end of the file) */
    if (ub_record_peek(s->map, (size_t)s->alloc, (size_t)pos, &rec, &why) != UB_OK ||
        get32(s->map + pos) != 0)
        return 0;
    return all_zero(s->map + rec.next, s->alloc - rec.next);
}

static void reset_counts(ub_segment *s)
{
    s->records = 0;
    s->messages = 0;
    s->last_type = UB_REC_ZERO;
    index_reset(s);
    __atomic_store_n(&s->end, UB_SEG_HEADER_SIZE, __ATOMIC_RELEASE);
}

/* Scan records from the header up to `limit`, verifying every CRC and
 * rebuilding index and counts. Sets *stop where it stopped (== limit when all
 * valid) and returns the decoder's verdict at that position. */
static int scan(ub_segment *s, uint64_t limit, uint64_t *stop, const char **reason)
{
    reset_counts(s);
    uint64_t pos = UB_SEG_HEADER_SIZE;
    int rc = UB_OK;
    while (pos < limit) {
        ub_record rec;
        rc = ub_record_decode(s->map, (size_t)limit, (size_t)pos, &rec, reason);
        if (rc != UB_OK)
            break;
        if (s->messages + rec.msg_count > UINT32_MAX) {
            *reason = "message count overflow";
            rc = UB_ECORRUPT;
            break;
        }
        index_note(s, pos, s->messages);
        s->records++;
        s->messages += rec.msg_count;
        s->last_type = rec.type;
        pos = rec.next;
    }
    *stop = pos;
    __atomic_store_n(&s->end, pos, __ATOMIC_RELEASE);
    return pos == limit ? UB_OK : rc;
}

/* ---- header ------------------------------------------------------------ */

static void header_encode(uint8_t *h, const ub_segment *s)
{
    memset(h, 0, UB_SEG_HEADER_SIZE);
    memcpy(h, UB_SEG_MAGIC, UB_MAGIC_SIZE);
    put32(h + 8, UB_FORMAT_VERSION);
    put32(h + 12, UB_SEG_HEADER_SIZE);
    put64(h + 16, s->base_offset);
    put64(h + 24, s->base_msg);
    put64(h + 32, s->created_ms);
    put32(h + UB_SEG_HEADER_CRC_POS,
          ub_crc_mask(ub_crc32c(h, UB_SEG_HEADER_CRC_POS)));
}

static int header_decode(ub_segment *s, const uint8_t *h, uint64_t size,
                         const char **reason)
{
    if (size < UB_SEG_HEADER_SIZE) {
        *reason = "short segment header";
        return UB_ECORRUPT;
    }
    if (memcmp(h, UB_SEG_MAGIC, UB_MAGIC_SIZE) != 0 ||
        ub_crc_unmask(get32(h + UB_SEG_HEADER_CRC_POS)) !=
            ub_crc32c(h, UB_SEG_HEADER_CRC_POS)) {
        *reason = all_zero(h, UB_SEG_HEADER_SIZE) ? "zero segment header"
                                                  : "bad segment header";
        return UB_ECORRUPT;
    }
    if (get32(h + 8) != UB_FORMAT_VERSION || get32(h + 12) != UB_SEG_HEADER_SIZE) {
        *reason = "unsupported segment version";
        return UB_ECORRUPT;
    }
    s->base_offset = get64(h + 16);
    s->base_msg = get64(h + 24);
    s->created_ms = get64(h + 32);
    return UB_OK;
}

/* ---- life cycle -------------------------------------------------------- */

static ub_segment *seg_new(void)
{
    ub_segment *s = calloc(1, sizeof(*s));
    if (s) {
        s->fd = -1;
        s->map = MAP_FAILED;
    }
    return s;
}

void ub_segment_close(ub_segment *s)
{
    if (!s)
        return;
    if (s->map != MAP_FAILED)
        munmap(s->map, (size_t)s->map_len);
    if (s->fd >= 0)
        close(s->fd);
    free(s->idx);
    free(s);
}

static uint64_t round_up(uint64_t v, uint64_t to)
{
    return (v + to - 1) / to * to;
}

/* Make sure the file is allocated up to at least `need` bytes. */
static int grow(ub_segment *s, uint64_t need)
{
    if (need <= s->alloc)
        return UB_OK;
    uint64_t target = s->alloc * 2;
    if (target < need)
        target = need;
    target = round_up(target, 4096);
    if (target > s->capacity)
        target = s->capacity;
    int err = seg_fallocate(s->fd, (off_t)s->alloc, (off_t)(target - s->alloc));
    uint64_t exact = round_up(need, 4096) < s->capacity ? round_up(need, 4096) : s->capacity;
    if ((err == ENOSPC || err == EDQUOT) && exact < target) {
        /* the doubling did not fit: ask for only what this record needs */
        target = exact;
        err = seg_fallocate(s->fd, (off_t)s->alloc, (off_t)(target - s->alloc));
    }
    if (err)
        return io_error(s, err);
    s->alloc = target;
    return UB_OK;
}

int ub_segment_create(const char *path, uint64_t base_offset, uint64_t base_msg,
                      uint64_t created_ms, uint64_t capacity,
                      uint32_t index_interval, ub_segment **out, int *os_errno)
{
    *out = NULL;
    *os_errno = 0;
    if (capacity < UB_SEG_HEADER_SIZE + UB_REC_HEADER_SIZE ||
        capacity > UB_MAX_CAPACITY || index_interval == 0)
        return UB_EINVAL;
    ub_segment *s = seg_new();
    if (!s)
        return UB_ENOMEM;
    s->base_offset = base_offset;
    s->base_msg = base_msg;
    s->created_ms = created_ms;
    s->capacity = capacity;
    s->interval = index_interval;
    int rc = index_alloc(s, capacity / index_interval + 2);
    if (rc != UB_OK)
        goto fail;
    s->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (s->fd < 0) {
        rc = io_error(s, errno);
        goto fail;
    }
    uint64_t first = capacity < UB_INITIAL_ALLOC ? capacity : UB_INITIAL_ALLOC;
    int err = seg_fallocate(s->fd, 0, (off_t)first);
    if (err) {
        rc = io_error(s, err);
        goto fail_unlink;
    }
    s->alloc = first;
    s->map_len = capacity;
    s->map = mmap(NULL, (size_t)capacity, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
    if (s->map == MAP_FAILED) {
        rc = io_error(s, errno);
        goto fail_unlink;
    }
    header_encode(s->map, s);
    reset_counts(s);
    if (fdatasync(s->fd) != 0) {
        rc = io_error(s, errno);
        goto fail_unlink;
    }
    *out = s;
    return UB_OK;
fail_unlink:
    unlink(path);
fail:
    *os_errno = s->os_errno;
    ub_segment_close(s);
    return rc;
}

/* ---- index file -------------------------------------------------------- */
/* Layout: magic[8] | version u32 | entries u32 | data end u64 | records u64 |
 * messages u64 | last type u32 | reserved | crc u32 at UB_IDX_HEADER_CRC_POS
 * (masked, of the header bytes before it extended by the entries) | entries (pos u32, msg u32)...
 * Everything read back is checked against the segment before it is used. */

static int index_write(const ub_segment *s, const char *idx_path)
{
    uint8_t h[UB_IDX_HEADER_SIZE];
    uint32_t n = s->idx_len;
    memset(h, 0, sizeof h);
    memcpy(h, UB_IDX_MAGIC, UB_MAGIC_SIZE);
    put32(h + 8, UB_FORMAT_VERSION);
    put32(h + 12, n);
    put64(h + 16, s->end);
    put64(h + 24, s->records);
    put64(h + 32, s->messages);
    put32(h + 40, s->last_type);
    size_t body = (size_t)n * UB_IDX_ENTRY_SIZE;
    uint8_t *buf = malloc(body ? body : 1);
    if (!buf)
        return UB_ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        put32(buf + 8 * (size_t)i, s->idx[i].pos);
        put32(buf + 8 * (size_t)i + 4, s->idx[i].msg);
    }
    uint32_t crc = ub_crc32c_extend(ub_crc32c(h, UB_IDX_HEADER_CRC_POS), buf, body);
    put32(h + UB_IDX_HEADER_CRC_POS, ub_crc_mask(crc));

    size_t plen = strlen(idx_path);
    char *tmp = malloc(plen + 5);
    if (!tmp) {
        free(buf);
        return UB_ENOMEM;
    }
    memcpy(tmp, idx_path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    int rc = UB_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = io_error(NULL, errno);
    } else {
        const uint8_t *parts[2] = {h, buf};
        size_t sizes[2] = {sizeof h, body};
        for (int i = 0; i < 2 && rc == UB_OK; i++) {
            size_t done = 0;
            while (done < sizes[i]) {
                ssize_t w = write(fd, parts[i] + done, sizes[i] - done);
                if (w < 0 && errno == EINTR)
                    continue;
                if (w <= 0) {
                    rc = io_error(NULL, errno);
                    break;
                }
                done += (size_t)w;
            }
        }
        close(fd);
        if (rc == UB_OK && rename(tmp, idx_path) != 0)
            rc = io_error(NULL, errno);
        if (rc != UB_OK)
            unlink(tmp);
    }
    free(tmp);
    free(buf);
    return rc;
}

static int read_exact(int fd, uint8_t *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = read(fd, buf + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    return 0;
}

/* Load the index of a sealed segment of `size` bytes. Any doubt -> UB_ECORRUPT
 * and the caller rebuilds by scanning. */
static int index_load(ub_segment *s, const char *idx_path, uint64_t size)
{
    int fd = open(idx_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return UB_ECORRUPT;
    uint8_t h[UB_IDX_HEADER_SIZE];
    struct stat st;
    int rc = UB_ECORRUPT;
    uint8_t *buf = NULL;
    if (fstat(fd, &st) != 0 || read_exact(fd, h, sizeof h) != 0)
        goto out;
    uint32_t n = get32(h + 12);
    /* never trust n: it must match the file size and fit the segment */
    uint64_t max_entries = (size - UB_SEG_HEADER_SIZE) / UB_REC_HEADER_SIZE + 1;
    if (memcmp(h, UB_IDX_MAGIC, UB_MAGIC_SIZE) != 0 ||
        get32(h + 8) != UB_FORMAT_VERSION || n == 0 || n > max_entries ||
        (uint64_t)st.st_size != UB_IDX_HEADER_SIZE + (uint64_t)n * UB_IDX_ENTRY_SIZE ||
        get64(h + 16) != size || get32(h + 40) > UB_REC_MAX_TYPE)
        goto out;
    buf = malloc((size_t)n * UB_IDX_ENTRY_SIZE);
    if (!buf || read_exact(fd, buf, (size_t)n * UB_IDX_ENTRY_SIZE) != 0)
        goto out;
    uint32_t crc = ub_crc32c_extend(ub_crc32c(h, UB_IDX_HEADER_CRC_POS), buf,
                                    (size_t)n * UB_IDX_ENTRY_SIZE);
    if (ub_crc_unmask(get32(h + UB_IDX_HEADER_CRC_POS)) != crc)
        goto out;
    if (index_alloc(s, n) != UB_OK)
        goto out;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t pos = get32(buf + 8 * (size_t)i), msg = get32(buf + 8 * (size_t)i + 4);
        int ordered = i == 0 ? (pos == UB_SEG_HEADER_SIZE && msg == 0)
                             : (pos > s->idx[i - 1].pos && msg >= s->idx[i - 1].msg);
        if (!ordered || pos >= size || msg > get64(h + 32)) {
            free(s->idx);
            s->idx = NULL;
            goto out;
        }
        s->idx[i].pos = pos;
        s->idx[i].msg = msg;
    }
    s->idx_len = n;
    s->records = get64(h + 24);
    s->messages = get64(h + 32);
    s->last_type = get32(h + 40);
    s->end = size;
    rc = UB_OK;
out:
    free(buf);
    close(fd);
    return rc;
}

/* ---- open / recover ----------------------------------------------------- */

static int open_sealed(ub_segment *s, const char *idx_path, uint64_t size,
                       ub_scan_result *res)
{
    s->sealed = 1;
    if (index_load(s, idx_path, size) == UB_OK)
        return UB_OK;
    res->index_rebuilt = 1;
    int rc = index_alloc(s, (size - UB_SEG_HEADER_SIZE) / UB_REC_HEADER_SIZE + 1);
    if (rc != UB_OK)
        return rc;
    s->interval = s->interval ? s->interval : UB_DEFAULT_INDEX_INTERVAL;
    uint64_t stop;
    rc = scan(s, size, &stop, &res->reason);
    res->records = s->records;
    res->valid_end = stop;
    if (rc != UB_OK) {
        res->bad_pos = stop;
        if (rc == UB_ENEEDMORE)
            res->reason = "truncated record";
        return UB_ECORRUPT;
    }
    index_write(s, idx_path); /* best effort: the index is rebuildable */
    return UB_OK;
}

static int open_active(ub_segment *s, int mode, ub_scan_result *res)
{
    uint64_t stop;
    const char *why = NULL;
    int rc = scan(s, s->alloc, &stop, &why);
    res->records = s->records;
    res->valid_end = stop;
    if (rc == UB_OK || all_zero(s->map + stop, s->alloc - stop))
        return UB_OK;
    if (mode != UB_OPEN_REPAIR && !write_in_progress(s, stop) &&
        valid_record_after(s->map, stop, s->alloc)) {
        res->bad_pos = stop;
        res->reason = rc == UB_ENEEDMORE ? "bad record length" : why;
        return UB_ECORRUPT;
    }
    /* torn tail: zero it so the next append starts on clean bytes */
    uint64_t last = s->alloc;
    while (last > stop && s->map[last - 1] == 0)
        last--;
    memset(s->map + stop, 0, (size_t)(last - stop));
    res->bytes_cut = last - stop;
    if (fdatasync(s->fd) != 0)
        return io_error(s, errno);
    return UB_OK;
}

int ub_segment_open(const char *path, const char *idx_path, int mode,
                    uint64_t capacity, uint32_t index_interval,
                    ub_segment **out, ub_scan_result *res)
{
    memset(res, 0, sizeof *res);
    *out = NULL;
    if (mode < UB_OPEN_SEALED || mode > UB_OPEN_REPAIR || index_interval == 0)
        return UB_EINVAL;
    ub_segment *s = seg_new();
    if (!s)
        return UB_ENOMEM;
    s->interval = index_interval;
    int rc;
    struct stat st;
    s->fd = open(path, (mode == UB_OPEN_SEALED ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (s->fd < 0 || fstat(s->fd, &st) != 0) {
        rc = io_error(s, errno);
        goto fail;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size > UB_MAX_CAPACITY) {
        res->reason = "segment file too large";
        rc = UB_ECORRUPT;
        goto fail;
    }
    s->alloc = size;
    s->capacity = mode == UB_OPEN_SEALED || capacity < size ? size : capacity;
    if (s->capacity > UB_MAX_CAPACITY)
        s->capacity = UB_MAX_CAPACITY;
    if (size < UB_SEG_HEADER_SIZE) {
        res->reason = "short segment header";
        rc = UB_ECORRUPT;
        goto fail;
    }
    s->map_len = s->capacity;
    s->map = mmap(NULL, (size_t)s->map_len,
                  mode == UB_OPEN_SEALED ? PROT_READ : PROT_READ | PROT_WRITE,
                  MAP_SHARED, s->fd, 0);
    if (s->map == MAP_FAILED) {
        rc = io_error(s, errno);
        goto fail;
    }
    rc = header_decode(s, s->map, size, &res->reason);
    if (rc != UB_OK)
        goto fail;
    if (mode == UB_OPEN_SEALED) {
        rc = open_sealed(s, idx_path, size, res);
        close(s->fd); /* the mapping stays valid; sealed segments need no fd */
        s->fd = -1;
    } else {
        rc = index_alloc(s, s->capacity / s->interval + 2);
        if (rc == UB_OK)
            rc = open_active(s, mode, res);
    }
    if (rc != UB_OK)
        goto fail;
    *out = s;
    return UB_OK;
fail:
    res->os_errno = s->os_errno;
    ub_segment_close(s);
    return rc;
}

void ub_segment_info_get(const ub_segment *s, ub_segment_info *info)
{
    info->base_offset = s->base_offset;
    info->base_msg = s->base_msg;
    info->created_ms = s->created_ms;
    info->end = load_end(s);
    info->capacity = s->capacity;
    info->alloc = s->alloc;
    info->records = s->records;
    info->messages = s->messages;
    info->last_type = s->last_type;
    info->index_entries = load_idx_len(s);
    info->sealed = s->sealed;
    info->os_errno = s->os_errno;
}

uint64_t ub_segment_end(const ub_segment *s)
{
    return load_end(s);
}

const uint8_t *ub_segment_data(const ub_segment *s)
{
    return s->map;
}

/* ---- append ------------------------------------------------------------- */

static int append_one(ub_segment *s, uint32_t type, uint32_t msg_count,
                      const uint8_t *attrs, size_t attrs_len,
                      const uint8_t *payload, size_t payload_len)
{
    if (s->sealed || type == UB_REC_ZERO || type > UB_REC_MAX_TYPE)
        return UB_EINVAL;
    if (attrs_len > UB_MAX_ATTRS || payload_len > UB_MAX_PAYLOAD)
        return UB_ETOOBIG;
    if (s->messages + msg_count > UINT32_MAX)
        return UB_ENOSPACE;
    uint64_t pos = s->end, size = ub_record_size(attrs_len, payload_len);
    if (pos + size > s->capacity)
        return UB_ENOSPACE;
    int rc = grow(s, pos + size);
    if (rc != UB_OK)
        return rc;
    uint8_t *h = s->map + pos;
    put32(h + 4, (uint32_t)payload_len);
    h[8] = (uint8_t)attrs_len;
    h[9] = (uint8_t)(attrs_len >> 8);
    h[UB_REC_TYPE_POS] = (uint8_t)type;
    h[UB_REC_TYPE_POS + 1] = 0;
    put32(h + 12, msg_count);
    uint32_t crc = ub_crc32c(h + 4, UB_REC_HEADER_SIZE - 4);
    if (attrs_len)
        crc = ub_crc32c_copy(crc, h + UB_REC_HEADER_SIZE, attrs, attrs_len);
    if (payload_len)
        crc = ub_crc32c_copy(crc, h + UB_REC_HEADER_SIZE + attrs_len, payload, payload_len);
    put32(h, ub_crc_mask(crc));
    index_note(s, pos, s->messages);
    s->records++;
    s->messages += msg_count;
    s->last_type = type;
    __atomic_store_n(&s->end, pos + size, __ATOMIC_RELEASE);
    return UB_OK;
}

int ub_segment_append(ub_segment *s, uint32_t type, uint32_t msg_count,
                      const uint8_t *attrs, size_t attrs_len,
                      const uint8_t *payload, size_t payload_len, uint64_t *end)
{
    int rc = append_one(s, type, msg_count, attrs, attrs_len, payload, payload_len);
    *end = s->end;
    return rc;
}

int ub_segment_append_batch(ub_segment *s, const uint8_t *payloads,
                            const uint32_t *lens, size_t n, size_t *done,
                            uint64_t *end)
{
    int rc = UB_OK;
    size_t i = 0;
    for (; i < n; i++) {
        rc = append_one(s, UB_REC_DATA, 1, NULL, 0, payloads, lens[i]);
        if (rc != UB_OK)
            break;
        payloads += lens[i];
    }
    *done = i;
    *end = s->end;
    return rc;
}

/* After a failed fdatasync, Linux may have marked the pages whose writeback
 * failed clean while they still hold our bytes ("fsyncgate"): a later
 * fdatasync that succeeds would then not write them, yet the caller would
 * count them durable. So the next sync first writes everything since the last
 * successful one again (pwrite from the mapping onto the same file range,
 * which dirties those pages anew), and only then flushes. Appends never write
 * below `end` again, so this races with none of them (ub_segment_truncate does,
 * but nothing in the engine truncates an open log; tests and tools do, alone). */
static int redirty(ub_segment *s, uint64_t from, uint64_t end)
{
    while (from < end) {
        ssize_t w = pwrite(s->fd, s->map + from, (size_t)(end - from), (off_t)from);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return io_error(s, w < 0 ? errno : EIO);
        from += (uint64_t)w;
    }
    return UB_OK;
}

/* fdatasync with the bookkeeping above; `end` is what the flush covers. */
static int flush_to(ub_segment *s, uint64_t end)
{
    if (s->sync_failed && s->synced < end) {
        int rc = redirty(s, s->synced, end);
        if (rc != UB_OK)
            return rc;
    }
    if (seg_fdatasync(s->fd) != 0) {
        s->sync_failed = 1;
        return io_error(s, errno);
    }
    s->sync_failed = 0;
    if (end > s->synced)
        s->synced = end;
    return UB_OK;
}

int ub_segment_sync(ub_segment *s)
{
    if (s->fd < 0)
        return UB_OK; /* sealed and synced */
    /* Linux keeps one page cache: fdatasync writes back pages dirtied through
     * the shared mapping as well as the file size grown by posix_fallocate. */
    int rc = flush_to(s, load_end(s));
    if (rc != UB_OK)
        return rc;
    if (s->sealed) {
        close(s->fd); /* the mapping stays valid; synced sealed segments need no fd */
        s->fd = -1;
    }
    return UB_OK;
}

int ub_segment_seal(ub_segment *s, const char *idx_path, int sync)
{
    if (s->sealed)
        return UB_OK;
    if (ftruncate(s->fd, (off_t)s->end) != 0)
        return io_error(s, errno);
    s->alloc = s->end;
    if (sync) {
        int rc = flush_to(s, s->end);
        if (rc != UB_OK)
            return rc;
    }
    s->sealed = 1;
    index_write(s, idx_path); /* best effort: rebuilt by scanning when missing */
    if (sync) {
        close(s->fd);
        s->fd = -1;
    }
    return UB_OK;
}

int ub_segment_truncate(ub_segment *s, uint64_t pos)
{
    uint64_t bad_pos;
    const char *why;
    if (s->sealed)
        return UB_EINVAL;
    if (ub_segment_check_boundary(s, pos, &bad_pos, &why) != UB_OK)
        return UB_ERANGE;
    uint64_t old_end = s->end, stop;
    memset(s->map + pos, 0, (size_t)(old_end - pos));
    scan(s, pos, &stop, &why);
    return stop == pos ? UB_OK : UB_ECORRUPT;
}

/* ---- read --------------------------------------------------------------- */

/* Decode the record at p (below end), CRC included; on damage report where. */
static int hop(const ub_segment *s, uint64_t p, uint64_t end, ub_record *rec,
               uint64_t *bad_pos, const char **reason)
{
    int rc = ub_record_decode(s->map, (size_t)end, (size_t)p, rec, reason);
    if (rc == UB_OK)
        return UB_OK;
    if (rc == UB_ENEEDMORE)
        *reason = "truncated record";
    *bad_pos = p;
    return UB_ECORRUPT;
}

/* Hops verify each record's CRC: a damaged length can then never walk us off
 * the record boundaries (and an index that lies is caught the same way). The
 * cost is at most index_interval bytes of CRC per lookup. */
int ub_segment_check_boundary(const ub_segment *s, uint64_t pos, uint64_t *bad_pos,
                              const char **reason)
{
    uint64_t end = load_end(s);
    if (pos < UB_SEG_HEADER_SIZE || pos > end)
        return UB_ERANGE;
    uint64_t p = s->idx[index_floor(s, pos, 0)].pos;
    while (p < pos) {
        ub_record rec;
        if (hop(s, p, end, &rec, bad_pos, reason) != UB_OK)
            return UB_ECORRUPT;
        p = rec.next;
    }
    return p == pos ? UB_OK : UB_ERANGE;
}

int ub_segment_record_at(const ub_segment *s, uint64_t pos, ub_record *rec,
                         uint64_t *bad_pos, const char **reason)
{
    uint64_t end = load_end(s);
    *reason = NULL;
    *bad_pos = pos;
    int rc = ub_segment_check_boundary(s, pos, bad_pos, reason);
    if (rc != UB_OK || pos == end)
        return rc == UB_OK ? UB_ERANGE : rc;
    return hop(s, pos, end, rec, bad_pos, reason);
}

int ub_segment_read(const ub_segment *s, uint64_t pos, uint64_t limit,
                    uint8_t *out, size_t cap, int json, ub_read_result *r)
{
    uint32_t started = r->json_started;
    memset(r, 0, sizeof *r);
    r->json_started = started;
    r->next = pos;
    uint64_t end = load_end(s);
    if (limit > end)
        limit = end;
    int rc = ub_segment_check_boundary(s, pos, &r->bad_pos, &r->reason);
    if (rc != UB_OK)
        return rc;
    while (pos < limit) {
        ub_record rec;
        const char *why = NULL;
        rc = ub_record_peek(s->map, (size_t)limit, (size_t)pos, &rec, &why);
        if (rc != UB_OK) {
            if (r->records > 0)
                break; /* serve what is intact; the next read reports this one */
            r->reason = rc == UB_ENEEDMORE ? "truncated record" : why;
            r->bad_pos = pos;
            return UB_ECORRUPT;
        }
        size_t sep = json && rec.payload_len && r->json_started ? 1 : 0;
        uint64_t need = rec.payload_len + sep;
        if (r->bytes + need > cap) {
            if (r->records == 0)
                r->need = need;
            break;
        }
        const uint8_t *h = s->map + pos;
        uint32_t crc = ub_crc32c(h + 4, (size_t)(rec.payload_pos - pos - 4));
        if (sep)
            out[r->bytes] = ',';
        crc = ub_crc32c_copy(crc, out + r->bytes + sep, s->map + rec.payload_pos,
                             rec.payload_len);
        if (crc != ub_crc_unmask(get32(h))) {
            r->bad_pos = pos;
            r->reason = "checksum mismatch";
            return UB_ECORRUPT;
        }
        r->bytes += need;
        if (json && rec.payload_len)
            r->json_started = 1;
        r->records++;
        r->messages += rec.msg_count;
        pos = rec.next;
        r->next = pos;
        if (rec.type == UB_REC_DATA_CLOSE || rec.type == UB_REC_CLOSE) {
            r->closed = 1;
            break;
        }
    }
    return UB_OK;
}

int ub_segment_find_msg(const ub_segment *s, uint64_t msg_rel, uint64_t *rec_pos,
                        uint64_t *rec_first_msg, uint64_t *bad_pos,
                        const char **reason)
{
    uint64_t end = load_end(s);
    uint32_t i = index_floor(s, msg_rel, 1);
    uint64_t p = s->idx[i].pos, m = s->idx[i].msg;
    while (p < end) {
        ub_record rec;
        if (hop(s, p, end, &rec, bad_pos, reason) != UB_OK)
            return UB_ECORRUPT;
        if (msg_rel < m + rec.msg_count) {
            *rec_pos = p;
            *rec_first_msg = m;
            return UB_OK;
        }
        m += rec.msg_count;
        p = rec.next;
    }
    return UB_ERANGE;
}

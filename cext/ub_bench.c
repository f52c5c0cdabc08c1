/* ub_bench.c -- what the machine does with the same bytes, with no framing,
 * no CRC and no Python: the ceilings the benchmarks print ratios against. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "ub_bench.h"
#include "ub_errors.h"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint8_t *pattern(uint64_t chunk)
{
    uint8_t *src = malloc(chunk ? (size_t)chunk : 1);
    if (src)
        for (uint64_t i = 0; i < chunk; i++)
            src[i] = (uint8_t)(i * 131 + 7);
    return src;
}

int ub_bench_mmap_copy(const char *path, uint64_t total, uint64_t chunk, uint64_t *ns)
{
    if (chunk == 0 || total < chunk)
        return UB_EINVAL;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return UB_EIO;
    int rc = UB_OK;
    uint8_t *src = pattern(chunk);
    uint8_t *map = MAP_FAILED;
    if (!src) {
        rc = UB_ENOMEM;
        goto out;
    }
    if (posix_fallocate(fd, 0, (off_t)total) != 0) {
        rc = UB_EFULL;
        goto out;
    }
    map = mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        rc = UB_EIO;
        goto out;
    }
    uint64_t t0 = now_ns();
    for (uint64_t pos = 0; pos + chunk <= total; pos += chunk)
        memcpy(map + pos, src, (size_t)chunk);
    *ns = now_ns() - t0;
out:
    if (map != MAP_FAILED)
        munmap(map, (size_t)total);
    free(src);
    close(fd);
    unlink(path);
    return rc;
}

int ub_bench_memcpy(uint64_t total, uint64_t chunk, uint64_t *ns)
{
    if (chunk == 0 || total < chunk)
        return UB_EINVAL;
    uint8_t *src = pattern(total);
    uint8_t *dst = malloc((size_t)total);
    if (!src || !dst) {
        free(src);
        free(dst);
        return UB_ENOMEM;
    }
    memset(dst, 1, (size_t)total); /* fault the pages in before timing */
    uint64_t t0 = now_ns();
    for (uint64_t pos = 0; pos + chunk <= total; pos += chunk)
        memcpy(dst + pos, src + pos, (size_t)chunk);
    *ns = now_ns() - t0;
    /* keep the copy observable so it cannot be optimised away */
    volatile uint8_t sink = dst[total - 1];
    (void)sink;
    free(src);
    free(dst);
    return UB_OK;
}

int ub_bench_fdatasync(const char *path, uint32_t rounds, uint32_t size, uint64_t *ns)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return UB_EIO;
    uint8_t *buf = pattern(size);
    int rc = buf ? UB_OK : UB_ENOMEM;
    /* preallocated and synced first, as the engine's segments are, so each
     * round measures a data flush rather than a file-size change */
    if (rc == UB_OK && (posix_fallocate(fd, 0, (off_t)rounds * size) != 0 || fsync(fd) != 0))
        rc = UB_EIO;
    uint64_t t0 = now_ns();
    for (uint32_t i = 0; i < rounds && rc == UB_OK; i++) {
        if (pwrite(fd, buf, size, (off_t)i * size) != (ssize_t)size || fdatasync(fd) != 0)
            rc = UB_EIO;
    }
    *ns = now_ns() - t0;
    free(buf);
    close(fd);
    unlink(path);
    return rc;
}

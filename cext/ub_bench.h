/* ub_bench.h -- the machine's ceilings, measured in C so the benchmarks can
 * print every figure beside what the hardware does with the same bytes. */
#ifndef UB_BENCH_H
#define UB_BENCH_H
#include <stddef.h>
#include <stdint.h>

/* Copy `total` bytes in `chunk`-sized pieces into a fresh MAP_SHARED mapping of
 * a file preallocated at path (created, then removed). *ns = elapsed time. */
int ub_bench_mmap_copy(const char *path, uint64_t total, uint64_t chunk,
                       uint64_t *ns);
/* memcpy `total` bytes in `chunk`-sized pieces between two heap buffers. */
int ub_bench_memcpy(uint64_t total, uint64_t chunk, uint64_t *ns);
/* fdatasync latency: `rounds` times write `size` bytes at the end of a file at
 * path and fdatasync it. */
int ub_bench_fdatasync(const char *path, uint32_t rounds, uint32_t size,
                       uint64_t *ns);
#endif

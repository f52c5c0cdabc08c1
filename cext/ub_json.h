/* ub_json.h -- strict RFC 8259 validation and one-level array flattening.
 *
 * ub_json_flatten() validates buf[0, len) as exactly one JSON text (insignificant
 * whitespace around it allowed; no BOM, no trailing garbage, no NaN/Infinity,
 * valid UTF-8, no raw control characters in strings, nesting at most
 * UB_JSON_MAX_DEPTH; any \uXXXX escape, a lone surrogate too, is accepted)
 * and writes to out the messages it holds:
 *   - a top-level array: its elements, each byte-for-byte verbatim, joined by ','
 *     (whitespace between elements dropped), *count = number of elements
 *     (0 for "[]": the store refuses that on append);
 *   - any other value: the value verbatim without surrounding whitespace,
 *     *count = 1.
 * out must have room for len bytes (the output is never longer than the input).
 * Returns UB_OK, or UB_EJSON with *err_pos set to the byte where parsing failed.
 */
#ifndef UB_JSON_H
#define UB_JSON_H

#include <stddef.h>
#include <stdint.h>

#define UB_JSON_MAX_DEPTH 512

int ub_json_flatten(const uint8_t *buf, size_t len, uint8_t *out,
                    size_t *out_len, uint32_t *count, size_t *err_pos);

/* Validate only (same rules); *is_array tells whether the top level is an array
 * and *count how many elements it has (1 for a non-array value). */
int ub_json_validate(const uint8_t *buf, size_t len, int *is_array,
                     uint32_t *count, size_t *err_pos);

/* Byte length of the first n values of a stored payload (values joined by ','
 * as ub_json_flatten writes them). UB_ERANGE when it holds fewer than n. */
int ub_json_prefix(const uint8_t *buf, size_t len, uint32_t n, size_t *prefix_len);

#endif

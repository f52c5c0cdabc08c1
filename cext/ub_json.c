/* ub_json.c -- strict RFC 8259 validation and one-level array flattening.
 *
 * What it does: ub_json_flatten() checks that buf[0, len) is exactly one JSON
 * text and, when the top level is an array, copies its elements verbatim into
 * out joined by ','; ub_json_validate() runs the same checks without output.
 * Both share run() below.
 *
 * How: one forward pass, no recursion, no allocation. The parser keeps the
 * kinds of the open containers (array or object) in a 512-bit stack inside a
 * small struct on the C stack; after each value it closes what that value
 * completes. Strings take a fast path that skips 8 plain ASCII bytes at a time
 * (SWAR), then check escapes and UTF-8 byte by byte.
 *
 * Invariants:
 *   - p->pos <= p->len at all times; every read of buf[i] is preceded by a check
 *     that i < len (the SWAR path reads 8 bytes only when 8 remain).
 *   - out is written only at out[w] with w <= bytes consumed so far: elements
 *     are disjoint substrings of the input and the ',' between two of them
 *     replaces at least one input ',', so the output never exceeds len. (Hence
 *     out == buf, an in-place flatten, is memory-safe; buf is then clobbered
 *     even if the text later turns out invalid.)
 *   - on failure *count and *out_len are 0 and *err_pos is set; on success
 *     *err_pos is left untouched.
 *   - p->err is the byte offset where the first error was detected (len when
 *     the input ends too early).
 *
 * Why the depth limit: it bounds the container stack to a fixed 64 bytes, so
 * no input (10 MB of '[') can exhaust memory or the C stack; and whoever parses
 * the stored messages later (Python's json, a client's recursive parser)
 * recurses per level, so the store refuses what its readers might crash on.
 * The top-level container is depth 1.
 *
 * Like Python's json, any \uXXXX escape is accepted, lone surrogate escapes
 * (\uD800 alone, \uDC00 alone, a reversed pair) included: RFC 8259 section 7
 * allows them, JavaScript's JSON.stringify writes them, and the bytes are
 * stored and served as sent. Raw bytes must still be well-formed UTF-8, so an
 * encoded surrogate (ED A0 80) is refused. Duplicate object keys are accepted,
 * like Python.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ub_json.h"
#include "ub_errors.h"

#define KIND_WORDS ((UB_JSON_MAX_DEPTH + 63) / 64)

typedef struct {
    const uint8_t *buf;
    size_t len;
    size_t pos;                   /* next byte to read */
    size_t err;                   /* where the error was detected */
    uint32_t depth;               /* open containers */
    uint64_t kinds[KIND_WORDS];   /* bit d-1 set: container at depth d is an object */
} jparser;

static int fail(jparser *p, size_t at)
{
    p->err = at;
    return -1;
}

static int is_digit(uint8_t c)
{
    return (unsigned)(c - '0') < 10u;
}

static size_t skip_ws(const uint8_t *b, size_t i, size_t n)
{
    while (i < n && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t'))
        i++;
    return i;
}

static size_t skip_digits(const uint8_t *b, size_t i, size_t n)
{
    while (i < n && is_digit(b[i]))
        i++;
    return i;
}

/* ---- container stack ------------------------------------------------------ */

static int push(jparser *p, int is_object)
{
    uint32_t d = p->depth;
    uint64_t bit = (uint64_t)1 << (d % 64);

    if (d == UB_JSON_MAX_DEPTH)
        return fail(p, p->pos);
    if (is_object)
        p->kinds[d / 64] |= bit;
    else
        p->kinds[d / 64] &= ~bit;
    p->depth = d + 1;
    return 0;
}

static int top_is_object(const jparser *p)
{
    uint32_t d = p->depth - 1;
    return (int)((p->kinds[d / 64] >> (d % 64)) & 1u);
}

/* ---- strings -------------------------------------------------------------- */

#define ONES  0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Nonzero iff one of the 8 bytes in v is '"', '\\', < 0x20 or >= 0x80 (exact
 * "any byte" tests: zero-byte detection and the "less than n" trick). */
static int has_special(uint64_t v)
{
    uint64_t q = v ^ (ONES * '"');
    uint64_t s = v ^ (ONES * '\\');
    uint64_t t = ((q - ONES) & ~q) | ((s - ONES) & ~s) | ((v - ONES * 0x20) & ~v) | v;
    return (t & HIGHS) != 0;
}

/* Index of the first byte at or after i that is not plain printable ASCII. */
static size_t skip_plain(const uint8_t *b, size_t i, size_t n)
{
    uint64_t v;

    while (n - i >= 8) {
        memcpy(&v, b + i, 8);
        if (has_special(v))
            break;
        i += 8;
    }
    while (i < n && b[i] >= 0x20 && b[i] < 0x80 && b[i] != '"' && b[i] != '\\')
        i++;
    return i;
}

static int hexval(uint8_t c)
{
    if (is_digit(c))
        return c - '0';
    c = (uint8_t)(c | 0x20);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Four hex digits at buf[at]. */
static int check_hex4(jparser *p, size_t at)
{
    for (size_t k = 0; k < 4; k++) {
        if (at + k >= p->len)
            return fail(p, p->len);
        if (hexval(p->buf[at + k]) < 0)
            return fail(p, at + k);
    }
    return 0;
}

/* buf[*ip] == '\\': one escape. Any \uXXXX is one, a surrogate too: a pair is
 * two escapes, and a lone one is allowed (see the top of the file). */
static int scan_escape(jparser *p, size_t *ip)
{
    const uint8_t *b = p->buf;
    size_t i = *ip + 1;

    if (i >= p->len)
        return fail(p, p->len);
    switch (b[i]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        *ip = i + 1;
        return 0;
    case 'u':
        break;
    default:
        return fail(p, i);
    }
    if (check_hex4(p, i + 1))
        return -1;
    *ip = i + 5;
    return 0;
}

/* buf[*ip] >= 0x80: one well-formed UTF-8 sequence (Unicode table 3-7: no
 * overlongs, no surrogates, nothing above U+10FFFF). */
static int scan_utf8(jparser *p, size_t *ip)
{
    size_t i = *ip, need;
    uint8_t c = p->buf[i], lo = 0x80, hi = 0xBF;

    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return fail(p, i);
    }
    for (size_t k = 1; k <= need; k++) {
        if (i + k >= p->len)
            return fail(p, p->len);
        if (p->buf[i + k] < lo || p->buf[i + k] > hi)
            return fail(p, i + k);
        lo = 0x80;
        hi = 0xBF;
    }
    *ip = i + need + 1;
    return 0;
}

/* buf[p->pos] == '"'; on success p->pos is one past the closing quote. */
static int scan_string(jparser *p)
{
    const uint8_t *b = p->buf;
    size_t n = p->len, i = p->pos + 1;

    for (;;) {
        i = skip_plain(b, i, n);
        if (i >= n)
            return fail(p, n);
        if (b[i] == '"')
            break;
        if (b[i] < 0x20)                 /* raw control character */
            return fail(p, i);
        if (b[i] == '\\' ? scan_escape(p, &i) : scan_utf8(p, &i))
            return -1;
    }
    p->pos = i + 1;
    return 0;
}

/* ---- numbers and literals ------------------------------------------------- */

/* buf[p->pos] is '-' or a digit: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int scan_number(jparser *p)
{
    const uint8_t *b = p->buf;
    size_t n = p->len, i = p->pos;

    if (b[i] == '-')
        i++;
    if (i >= n || !is_digit(b[i]))
        return fail(p, i);
    i = b[i] == '0' ? i + 1 : skip_digits(b, i, n);
    if (i < n && b[i] == '.') {
        if (++i >= n || !is_digit(b[i]))
            return fail(p, i);
        i = skip_digits(b, i, n);
    }
    if (i < n && (b[i] == 'e' || b[i] == 'E')) {
        if (++i < n && (b[i] == '+' || b[i] == '-'))
            i++;
        if (i >= n || !is_digit(b[i]))
            return fail(p, i);
        i = skip_digits(b, i, n);
    }
    p->pos = i;
    return 0;
}

static int scan_literal(jparser *p, const char *word, size_t wlen)
{
    size_t i = p->pos;

    for (size_t k = 0; k < wlen; k++)
        if (i + k >= p->len || p->buf[i + k] != (uint8_t)word[k])
            return fail(p, i + k);
    p->pos = i + wlen;
    return 0;
}

/* ---- structure ------------------------------------------------------------ */

/* An object key and its ':' (whitespace around them allowed). */
static int scan_key(jparser *p)
{
    p->pos = skip_ws(p->buf, p->pos, p->len);
    if (p->pos >= p->len || p->buf[p->pos] != '"')
        return fail(p, p->pos);
    if (scan_string(p))
        return -1;
    p->pos = skip_ws(p->buf, p->pos, p->len);
    if (p->pos >= p->len || p->buf[p->pos] != ':')
        return fail(p, p->pos);
    p->pos++;
    return 0;
}

/* Start of a value (after optional whitespace). Returns 0 when a whole value
 * was read (a scalar, [] or {}), 1 when a container was opened and its first
 * member value comes next, -1 on error. */
static int scan_item(jparser *p)
{
    uint8_t c;
    int obj;

    p->pos = skip_ws(p->buf, p->pos, p->len);
    if (p->pos >= p->len)
        return fail(p, p->len);
    c = p->buf[p->pos];
    switch (c) {
    case '[':
    case '{':
        obj = c == '{';
        if (push(p, obj))
            return -1;
        p->pos = skip_ws(p->buf, p->pos + 1, p->len);
        if (p->pos < p->len && p->buf[p->pos] == (obj ? '}' : ']')) {
            p->pos++;
            p->depth--;
            return 0;
        }
        return obj ? (scan_key(p) ? -1 : 1) : 1;
    case '"':
        return scan_string(p);
    case 't':
        return scan_literal(p, "true", 4);
    case 'f':
        return scan_literal(p, "false", 5);
    case 'n':
        return scan_literal(p, "null", 4);
    default:
        if (c == '-' || is_digit(c))
            return scan_number(p);
        return fail(p, p->pos);
    }
}

/* After a member value of the innermost open container. Returns 1 after a ','
 * (and, in an object, the next key and ':'): a value comes next; 0 after the
 * closing bracket: the container itself was a whole value; -1 on error. */
static int after_item(jparser *p)
{
    int obj = top_is_object(p);

    p->pos = skip_ws(p->buf, p->pos, p->len);
    if (p->pos >= p->len)
        return fail(p, p->len);
    if (p->buf[p->pos] == ',') {
        p->pos++;
        return obj ? (scan_key(p) ? -1 : 1) : 1;
    }
    if (p->buf[p->pos] != (obj ? '}' : ']'))
        return fail(p, p->pos);
    p->pos++;
    p->depth--;
    return 0;
}

/* One whole value starting at p->pos (leading whitespace allowed). Containers
 * it opens are closed before it returns; p->pos ends one past its last byte. */
static int scan_value(jparser *p)
{
    const uint32_t base = p->depth;
    int r;

    for (;;) {
        r = scan_item(p);
        if (r < 0)
            return -1;
        if (r == 1)
            continue;
        do {
            if (p->depth == base)
                return 0;
            r = after_item(p);
            if (r < 0)
                return -1;
        } while (r == 0);
    }
}

/* Elements of the top-level array (its '[' already consumed and pushed).
 * Each is appended to out (if any) after a ',' separator. */
static int scan_elements(jparser *p, uint8_t *out, size_t *w, uint32_t *count)
{
    p->pos = skip_ws(p->buf, p->pos, p->len);
    if (p->pos < p->len && p->buf[p->pos] == ']') {
        p->pos++;
        return 0;
    }
    for (;;) {
        size_t start = skip_ws(p->buf, p->pos, p->len);
        p->pos = start;
        if (scan_value(p))
            return -1;
        if (*count == UINT32_MAX)        /* > 8 GiB of input: refuse, never wrap */
            return fail(p, start);
        if (out) {
            if (*count)
                out[(*w)++] = ',';
            memmove(out + *w, p->buf + start, p->pos - start);
            *w += p->pos - start;
        }
        ++*count;
        p->pos = skip_ws(p->buf, p->pos, p->len);
        if (p->pos >= p->len)
            return fail(p, p->len);
        if (p->buf[p->pos] == ']')
            break;
        if (p->buf[p->pos] != ',')
            return fail(p, p->pos);
        p->pos++;
    }
    p->pos++;
    return 0;
}

/* The whole text. out may be NULL (validate only). */
static int run(jparser *p, uint8_t *out, size_t *out_len, int *is_array, uint32_t *count)
{
    size_t w = 0, start;

    *count = 0;
    p->pos = skip_ws(p->buf, 0, p->len);
    start = p->pos;
    *is_array = start < p->len && p->buf[start] == '[';
    if (*is_array) {
        p->pos++;
        p->depth = 1;                    /* kinds[0] bit 0 == 0: an array */
        if (scan_elements(p, out, &w, count))
            return -1;
        p->depth = 0;
    } else {
        if (scan_value(p))
            return -1;
        w = p->pos - start;
        if (out)
            memmove(out, p->buf + start, w);
        *count = 1;
    }
    p->pos = skip_ws(p->buf, p->pos, p->len);
    if (p->pos != p->len)
        return fail(p, p->pos);
    *out_len = w;
    return 0;
}

static void init(jparser *p, const uint8_t *buf, size_t len)
{
    memset(p, 0, sizeof *p);
    p->buf = buf;
    p->len = len;
}

int ub_json_flatten(const uint8_t *buf, size_t len, uint8_t *out,
                    size_t *out_len, uint32_t *count, size_t *err_pos)
{
    jparser p;
    int is_array;

    if ((!buf || !out) && len)
        return UB_EINVAL;
    if (!out_len || !count || !err_pos)
        return UB_EINVAL;
    *out_len = 0;
    init(&p, buf, len);
    if (run(&p, out, out_len, &is_array, count)) {
        *count = 0;
        *out_len = 0;
        *err_pos = p.err;
        return UB_EJSON;
    }
    return UB_OK;
}

int ub_json_validate(const uint8_t *buf, size_t len, int *is_array,
                     uint32_t *count, size_t *err_pos)
{
    jparser p;
    size_t out_len;

    if (!buf && len)
        return UB_EINVAL;
    if (!is_array || !count || !err_pos)
        return UB_EINVAL;
    init(&p, buf, len);
    if (run(&p, NULL, &out_len, is_array, count)) {
        *is_array = 0;
        *count = 0;
        *err_pos = p.err;
        return UB_EJSON;
    }
    return UB_OK;
}

/* Length of the first n values of a stored JSON payload: the flattened values
 * of one append, joined by ',' (what ub_json_flatten writes). A fork at a
 * sub-offset keeps that prefix of the message it forks inside. */
int ub_json_prefix(const uint8_t *buf, size_t len, uint32_t n, size_t *prefix_len)
{
    jparser p;

    if ((!buf && len) || !prefix_len)
        return UB_EINVAL;
    init(&p, buf, len);
    for (uint32_t k = 0; k < n; k++) {
        if (k) {
            if (p.pos >= p.len || p.buf[p.pos] != ',')
                return p.pos >= p.len ? UB_ERANGE : UB_EJSON;
            p.pos++;
        }
        p.pos = skip_ws(p.buf, p.pos, p.len);
        if (p.pos >= p.len)
            return UB_ERANGE;
        if (scan_value(&p))
            return UB_EJSON;
        p.pos = skip_ws(p.buf, p.pos, p.len);
    }
    *prefix_len = p.pos;
    return UB_OK;
}

/* ub_errors.c -- names for the UB_E* codes (messages for humans; Python maps
 * codes to exception classes itself). */
#include "ub_errors.h"

const char *ub_strerror(int rc)
{
    switch (rc) {
    case UB_OK: return "ok";
    case UB_ENEEDMORE: return "record continues past the end of the buffer";
    case UB_ECORRUPT: return "corrupt data";
    case UB_EFULL: return "no space left on device";
    case UB_EIO: return "I/O error";
    case UB_ERANGE: return "offset is not a record boundary of this log";
    case UB_ETOOBIG: return "record too large";
    case UB_ENOMEM: return "out of memory";
    case UB_EINVAL: return "invalid argument";
    case UB_EJSON: return "invalid JSON";
    case UB_ENOSPACE: return "segment full";
    default: return "unknown error";
    }
}

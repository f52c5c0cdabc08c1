/* ub.h -- umbrella include for the cffi module (cext/build_ffi.py). */
#ifndef UB_H
#define UB_H
#include "ub_errors.h"
#include "ub_format.h"
#include "ub_crc32c.h"
#include "ub_record.h"
#include "ub_segment.h"
#include "ub_json.h"
#include "ub_bench.h"
#endif

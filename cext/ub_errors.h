/* ub_errors.h -- return codes shared by every C function in cext/.
 *
 * Every function that can fail returns an int: UB_OK (0) or a negative UB_E*
 * code. Functions that produce a size return it through an out-parameter, never
 * mixed with an error code. unbroken_engine/_native.py maps each code to one
 * exception class (the class carries UB_NAME = "UB_E..."), so nobody above
 * _native.py ever sees an integer code.
 */
#ifndef UB_ERRORS_H
#define UB_ERRORS_H

#define UB_OK         0
#define UB_ENEEDMORE (-1)  /* decoder: the buffer ends inside a record */
#define UB_ECORRUPT  (-2)  /* checksum mismatch, impossible length, bad header */
#define UB_EFULL     (-3)  /* no space left on the device (ENOSPC/EDQUOT) */
#define UB_EIO       (-4)  /* any other failed system call; errno is kept */
#define UB_ERANGE    (-5)  /* offset not a record boundary, or out of range */
#define UB_ETOOBIG   (-6)  /* record larger than UB_MAX_RECORD */
#define UB_ENOMEM    (-7)  /* allocation failed */
#define UB_EINVAL    (-8)  /* argument the caller should never pass */
#define UB_EJSON     (-9)  /* body is not one valid RFC 8259 JSON text */
#define UB_ENOSPACE  (-10) /* active segment has no room: the caller must roll */

const char *ub_strerror(int rc);

#endif

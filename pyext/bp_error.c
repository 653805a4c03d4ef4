/* Error messages and SQLSTATEs: one home for both the PostgreSQL and the Python bindings. */
#include <stdio.h>

#include "bp_core.h"

const char *
bp_error_message(char *buf, size_t bufsize, bp_status status, long long a, long long b)
{
	switch (status)
	{
		case BP_OK:
			snprintf(buf, bufsize, "no error");
			break;
		case BP_ERR_EMPTY:
			snprintf(buf, bufsize, "vector must have at least 1 dimension");
			break;
		case BP_ERR_TOO_LARGE:
			snprintf(buf, bufsize, "vector cannot have more than %d dimensions, got %lld",
					 BP_MAX_DIM, a);
			break;
		case BP_ERR_NONFINITE_VALUE:
			snprintf(buf, bufsize, "NaN or infinity not allowed in vector (element %lld)", a + 1);
			break;
		case BP_ERR_NONFINITE_THRESHOLD:
			snprintf(buf, bufsize, "NaN or infinity not allowed in thresholds (element %lld)", a + 1);
			break;
		case BP_ERR_DIM_MISMATCH:
			snprintf(buf, bufsize, "vector has %lld dimensions but thresholds have %lld", a, b);
			break;
		case BP_ERR_BIT_LENGTH_MISMATCH:
			snprintf(buf, bufsize, "different bit lengths %lld and %lld", a, b);
			break;
		case BP_ERR_UNKNOWN_IMPL:
			snprintf(buf, bufsize, "kernel path not supported on this CPU or not compiled in");
			break;
		default:
			snprintf(buf, bufsize, "unknown bitpress error %d", (int) status);
			break;
	}
	return buf;
}

const char *
bp_error_sqlstate(bp_status status)
{
	switch (status)
	{
		case BP_OK:
			return "00000";
		case BP_ERR_TOO_LARGE:
			return "54000";		/* program_limit_exceeded */
		case BP_ERR_NONFINITE_VALUE:
		case BP_ERR_NONFINITE_THRESHOLD:
			return "22P01";		/* floating_point_exception */
		case BP_ERR_DIM_MISMATCH:
		case BP_ERR_BIT_LENGTH_MISMATCH:
			return "22000";		/* data_exception, as pgvector's dimension checks */
		case BP_ERR_EMPTY:
			return "2202E";		/* array_subscript_error: empty array */
		case BP_ERR_UNKNOWN_IMPL:
			return "22023";		/* invalid_parameter_value */
		default:
			return "XX000";
	}
}

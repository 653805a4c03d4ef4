/* Error messages and SQLSTATEs: one home for both the PostgreSQL and the Python bindings. */
#include <stdio.h>

#include "bp_core.h"

static const char *
codebook_problem(int problem)
{
	switch (problem)
	{
		case BP_CB_SHORT:
			return "shorter than its header";
		case BP_CB_MAGIC:
			return "not a bitpress codebook (format 1)";
		case BP_CB_SIZE:
			return "length does not match its dimensions and bits";
		case BP_CB_SHAPE:
			return "no or too many dimensions, components or bits";
		case BP_CB_INDEX:
			return "a bit refers to a component that does not exist";
		case BP_CB_NONFINITE:
			return "NaN or infinity in its parameters";
		case BP_CB_ALIGN:
			return "buffer not 4-byte aligned";
		case BP_CB_ENDIAN:
			return "big-endian hosts are not supported";
		default:
			return "unknown problem";
	}
}

static const char *
tt_problem(int problem)
{
	switch (problem)
	{
		case BP_TT_NO_CORES:
			return "a tensor needs at least one core";
		case BP_TT_TOO_MANY_CORES:
			return "more cores than the 32 supported";
		case BP_TT_SHAPE:
			return "its shape has a dimension below 1 or is too large";
		case BP_TT_EDGE_RANK:
			return "the first core's left rank and the last core's right rank must be 1";
		case BP_TT_RANK_MISMATCH:
			return "its left rank differs from the right rank of the core before it";
		case BP_TT_SIZE:
			return "its number of elements differs from the product of its shape";
		case BP_TT_NONFINITE:
			return "NaN or infinity in its values";
		case BP_TT_MISSING:
			return "missing: cores must be numbered 0, 1, ... without gaps";
		case BP_TT_CHECKSUM:
			return "its data does not match its stored checksum";
		case BP_TT_ALIGN:
			return "data not 4-byte aligned";
		default:
			return "unknown problem";
	}
}

static const char *
ffn_problem(int problem)
{
	switch (problem)
	{
		case BP_FFN_SHORT:
			return "shorter than its header";
		case BP_FFN_MAGIC:
			return "not a bitpress layer (format 1)";
		case BP_FFN_SHAPE:
			return "dimensions, neurons or predictor rank out of range";
		case BP_FFN_ACTIVATION:
			return "unknown activation";
		case BP_FFN_SIZE:
			return "length does not match its dimensions";
		case BP_FFN_NONFINITE:
			return "NaN or infinity in its parameters";
		case BP_FFN_ALIGN:
			return "buffer not 4-byte aligned";
		default:
			return "unknown problem";
	}
}

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
		case BP_ERR_MALFORMED_CODEBOOK:
			snprintf(buf, bufsize, "malformed codebook: %s", codebook_problem((int) a));
			break;
		case BP_ERR_CODEBOOK_DIM_MISMATCH:
			snprintf(buf, bufsize, "vector has %lld dimensions but the codebook expects %lld", a, b);
			break;
		case BP_ERR_NO_LEVELS:
			snprintf(buf, bufsize, "codebook has no reconstruction levels for asymmetric scores "
					 "(it has pair bits or was stored without them)");
			break;
		case BP_ERR_MALFORMED_TT:
			snprintf(buf, bufsize, "malformed TT core %lld: %s", b, tt_problem((int) a));
			break;
		case BP_ERR_TT_INDEX:
			snprintf(buf, bufsize, "index %lld is out of range for a dimension of %lld", a, b);
			break;
		case BP_ERR_TT_INPUT_DIM:
			snprintf(buf, bufsize, "vector has %lld dimensions but the tensor has %lld rows", a, b);
			break;
		case BP_ERR_MALFORMED_FFN:
			snprintf(buf, bufsize, "malformed layer: %s", ffn_problem((int) a));
			break;
		case BP_ERR_FFN_INPUT_DIM:
			snprintf(buf, bufsize, "vector has %lld dimensions but the layer expects %lld", a, b);
			break;
		case BP_ERR_FFN_K:
			snprintf(buf, bufsize, "k must be between 1 and the layer's %lld neurons, got %lld", b, a);
			break;
		case BP_ERR_FFN_NO_PREDICTOR:
			snprintf(buf, bufsize, "layer has no predictor (or no thresholds) for sparse_ffn; "
					 "fit one with \"bitpress sparse fit\"");
			break;
		case BP_ERR_OVERFLOW:
			if (a >= 0)
				snprintf(buf, bufsize, "value out of range: element %lld of the result is not a "
						 "finite real (the computation overflows)", a);
			else
				snprintf(buf, bufsize, "value out of range: the result is not a finite real "
						 "(the computation overflows)");
			break;
		case BP_ERR_NEGATIVE_BITS:
			snprintf(buf, bufsize, "bit length must not be negative, got %lld", a);
			break;
		case BP_ERR_CODE_BYTES:
			snprintf(buf, bufsize, "%lld bytes cannot hold a code of %lld bits", a, b);
			break;
		case BP_ERR_CODE_PADDING:
			snprintf(buf, bufsize, "padding bits after bit %lld are not zero", a);
			break;
		case BP_ERR_CODE_FACTORS:
			if (a >= 0)
				snprintf(buf, bufsize, "code %lld is not a code of this RaBitQ codebook (its "
						 "correction factors are not finite numbers)", a + 1);
			else
				snprintf(buf, bufsize, "the code is not a code of this RaBitQ codebook (its "
						 "correction factors are not finite numbers)");
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
		case BP_ERR_CODEBOOK_DIM_MISMATCH:
		case BP_ERR_BIT_LENGTH_MISMATCH:
		case BP_ERR_TT_INPUT_DIM:
		case BP_ERR_FFN_INPUT_DIM:
			return "22000";		/* data_exception, as pgvector's dimension checks */
		case BP_ERR_EMPTY:
		case BP_ERR_TT_INDEX:
			return "2202E";		/* array_subscript_error: empty array */
		case BP_ERR_UNKNOWN_IMPL:
		case BP_ERR_NO_LEVELS:
		case BP_ERR_FFN_K:
		case BP_ERR_FFN_NO_PREDICTOR:
			return "22023";		/* invalid_parameter_value */
		case BP_ERR_OVERFLOW:
			return "22003";		/* numeric_value_out_of_range */
		case BP_ERR_NEGATIVE_BITS:
			return "22023";		/* invalid_parameter_value */
		case BP_ERR_CODE_BYTES:
		case BP_ERR_CODE_PADDING:
			return "22000";		/* data_exception */
		case BP_ERR_MALFORMED_CODEBOOK:
		case BP_ERR_MALFORMED_TT:
		case BP_ERR_MALFORMED_FFN:
		case BP_ERR_CODE_FACTORS:
			return "22P03";		/* invalid_binary_representation */
		default:
			return "XX000";
	}
}

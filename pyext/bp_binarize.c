/* binarize: one bit per dimension, bit i = 1 when x[i] > t[i], packed MSB-first like bit(n). */
#include <string.h>

#include "bp_core.h"

/*
 * Finite test on the bit pattern, so that it holds whatever floating-point flags the
 * including build uses (-ffast-math would turn isfinite() into "true").
 */
static inline int
bp_isfinite(float f)
{
	uint32_t	u;

	memcpy(&u, &f, sizeof(u));
	return (u & 0x7f800000u) != 0x7f800000u;
}

bp_status
bp_check_code_bytes(const uint8_t *b, size_t n, long long bits)
{
	if (bits < 0)
		return BP_ERR_NEGATIVE_BITS;
	if ((unsigned long long) n != ((unsigned long long) bits + 7) / 8)
		return BP_ERR_CODE_BYTES;
	if (bits % 8 != 0 && (b[n - 1] & (0xFFu >> (bits % 8))) != 0)
		return BP_ERR_CODE_PADDING;
	return BP_OK;
}

void
bp_half_to_float(const uint16_t *h, size_t n, float *out)
{
	for (size_t i = 0; i < n; i++)
	{
		uint32_t	sign = (uint32_t) (h[i] & 0x8000u) << 16;
		uint32_t	exp = (h[i] >> 10) & 0x1fu;
		uint32_t	man = h[i] & 0x3ffu;
		uint32_t	u;

		if (exp == 0x1fu)		/* infinity or NaN: the same, in float */
			u = sign | 0x7f800000u | (man << 13);
		else if (exp != 0)		/* normal: rebias the exponent (15 -> 127) */
			u = sign | ((exp + 112u) << 23) | (man << 13);
		else if (man == 0)		/* zero */
			u = sign;
		else
		{						/* subnormal: normalize */
			exp = 113;
			while ((man & 0x400u) == 0)
			{
				man <<= 1;
				exp--;
			}
			u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
		}
		memcpy(&out[i], &u, sizeof(float));
	}
}

bp_status
bp_check_result(const float *y, size_t n, size_t *bad_index)
{
	for (size_t i = 0; i < n; i++)
		if (!bp_isfinite(y[i]))
		{
			if (bad_index)
				*bad_index = i;
			return BP_ERR_OVERFLOW;
		}
	return BP_OK;
}

bp_status
bp_check_thresholds(const float *thresholds, size_t dim, size_t *bad_index)
{
	if (thresholds == NULL)
		return BP_OK;
	for (size_t i = 0; i < dim; i++)
	{
		if (!bp_isfinite(thresholds[i]))
		{
			if (bad_index)
				*bad_index = i;
			return BP_ERR_NONFINITE_THRESHOLD;
		}
	}
	return BP_OK;
}

static inline bp_status
check_dim(size_t dim)
{
	if (dim == 0)
		return BP_ERR_EMPTY;
	if (dim > BP_MAX_DIM)
		return BP_ERR_TOO_LARGE;
	return BP_OK;
}

/* Thresholds already checked. */
static bp_status
binarize_one(const float *x, const float *t, size_t dim, uint8_t *out, size_t *bad_index)
{
	size_t		nfull = dim / 8;
	size_t		i = 0;
	uint32_t	nonfinite = 0;

	for (size_t byte = 0; byte < nfull; byte++, i += 8)
	{
		uint8_t		v = 0;

		for (int k = 0; k < 8; k++)
		{
			uint32_t	u;
			float		tk = t ? t[i + k] : 0.0f;

			memcpy(&u, &x[i + k], sizeof(u));
			nonfinite |= (uint32_t) ((u & 0x7f800000u) == 0x7f800000u);
			v |= (uint8_t) ((x[i + k] > tk) << (7 - k));
		}
		out[byte] = v;
	}
	if (i < dim)
	{
		uint8_t		v = 0;

		for (int k = 0; i + k < dim; k++)
		{
			float		tk = t ? t[i + k] : 0.0f;

			nonfinite |= (uint32_t) !bp_isfinite(x[i + k]);
			v |= (uint8_t) ((x[i + k] > tk) << (7 - k));
		}
		out[nfull] = v;
	}
	if (nonfinite)
	{
		/* Rare path: find the first bad element for the message. */
		for (size_t j = 0; j < dim; j++)
		{
			if (!bp_isfinite(x[j]))
			{
				if (bad_index)
					*bad_index = j;
				break;
			}
		}
		return BP_ERR_NONFINITE_VALUE;
	}
	return BP_OK;
}

bp_status
bp_binarize(const float *x, const float *thresholds, size_t dim, uint8_t *out, size_t *bad_index)
{
	bp_status	st = check_dim(dim);

	if (st != BP_OK)
		return st;
	st = bp_check_thresholds(thresholds, dim, bad_index);
	if (st != BP_OK)
		return st;
	return binarize_one(x, thresholds, dim, out, bad_index);
}

bp_status
bp_binarize_batch(const float *x, size_t n, size_t dim, size_t row_stride,
				  const float *thresholds, size_t thr_stride,
				  uint8_t *out, size_t out_stride,
				  size_t *bad_row, size_t *bad_index)
{
	bp_status	st = check_dim(dim);
	size_t		nthr = thresholds == NULL ? 0 : (thr_stride == 0 ? 1 : n);

	if (st != BP_OK)
		return st;
	for (size_t r = 0; r < nthr; r++)
	{
		st = bp_check_thresholds(thresholds + r * thr_stride, dim, bad_index);
		if (st != BP_OK)
		{
			if (bad_row)
				*bad_row = r;
			return st;
		}
	}
	for (size_t r = 0; r < n; r++)
	{
		const float *t = thresholds == NULL ? NULL : thresholds + r * thr_stride;

		st = binarize_one(x + r * row_stride, t, dim, out + r * out_stride, bad_index);
		if (st != BP_OK)
		{
			if (bad_row)
				*bad_row = r;
			return st;
		}
	}
	return BP_OK;
}

/* Codebooks: parse the stored form, encode vectors, and score float queries against codes. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "bp_core.h"

static inline int
finite32(float f)
{
	uint32_t	u;

	memcpy(&u, &f, sizeof(u));
	return (u & 0x7f800000u) != 0x7f800000u;
}

static int
all_finite(const float *a, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!finite32(a[i]))
			return 0;
	return 1;
}

static inline uint32_t
rd32(const uint8_t *p)
{
	uint32_t	v;

	memcpy(&v, p, 4);
	return v;
}

static inline uint16_t
rd16(const uint8_t *p)
{
	uint16_t	v;

	memcpy(&v, p, 2);
	return v;
}

#define FAIL(why) do { if (problem) *problem = (why); return BP_ERR_MALFORMED_CODEBOOK; } while (0)

/* bytes of a RaBitQ code: its bit planes, then its factors */
static size_t
rabitq_code_bytes(uint64_t dims, uint32_t per_dim)
{
	return bp_ivf_code_bytes((size_t) dims, (int) per_dim) + sizeof(bp_ivf_factors);
}

static bp_status
parse_rabitq(const uint8_t *p, size_t len, uint16_t flags, uint64_t dims, uint64_t comps,
			 uint64_t bits, bp_codebook *cb, int *problem)
{
	size_t		pos = BP_CB_HEADER_BYTES;
	uint32_t	per_dim,
				metric;

	if (flags != (BP_CB_F_RABITQ | BP_CB_F_CENTER) || comps != dims)
		FAIL(BP_CB_SHAPE);
	if ((uint64_t) len != BP_CB_HEADER_BYTES + 4 * dims + 16)
		FAIL(BP_CB_SIZE);
	per_dim = rd32(p + pos + 4 * dims);
	metric = rd32(p + pos + 4 * dims + 4);
	if (per_dim < 1 || per_dim > BP_IVF_MAX_BITS || metric > BP_METRIC_COSINE
		|| bits != 8 * (uint64_t) rabitq_code_bytes(dims, per_dim))
		FAIL(BP_CB_SHAPE);
	memset(cb, 0, sizeof(*cb));
	cb->dims = (uint32_t) dims;
	cb->components = (uint32_t) dims;
	cb->bits = (uint32_t) bits;
	cb->center = (const float *) (p + pos);
	cb->rabitq = per_dim;
	cb->metric = (int) metric;
	cb->seed = (uint64_t) rd32(p + pos + 4 * dims + 8)
		| ((uint64_t) rd32(p + pos + 4 * dims + 12) << 32);
	if (!all_finite(cb->center, dims))
		FAIL(BP_CB_NONFINITE);
	return BP_OK;
}

bp_status
bp_codebook_parse(const void *buf, size_t len, bp_codebook *cb, int *problem)
{
	const uint8_t *p = buf;
	const uint16_t one = 1;
	uint16_t	flags;
	uint64_t	dims,
				comps,
				bits,
				need;
	size_t		pos = BP_CB_HEADER_BYTES;

	if (*(const uint8_t *) &one != 1)
		FAIL(BP_CB_ENDIAN);
	if (((uintptr_t) buf & 3) != 0)
		FAIL(BP_CB_ALIGN);
	if (len < BP_CB_HEADER_BYTES)
		FAIL(BP_CB_SHORT);
	if (memcmp(p, "BPCB", 4) != 0 || rd16(p + 4) != 1)
		FAIL(BP_CB_MAGIC);
	flags = rd16(p + 6);
	dims = rd32(p + 8);
	comps = rd32(p + 12);
	bits = rd32(p + 16);
	if ((flags & ~31u) != 0 || rd32(p + 20) != 0)
		FAIL(BP_CB_MAGIC);
	if (flags & BP_CB_F_RABITQ)
		return parse_rabitq(p, len, flags, dims, comps, bits, cb, problem);
	if (dims == 0 || dims > BP_MAX_DIM || comps == 0 || comps > BP_MAX_DIM
		|| bits == 0 || bits > 8 * (uint64_t) BP_MAX_DIM)
		FAIL(BP_CB_SHAPE);
	if (!(flags & BP_CB_F_PROJECTION) && comps != dims)
		FAIL(BP_CB_SHAPE);

	need = BP_CB_HEADER_BYTES
		+ 4 * ((flags & BP_CB_F_CENTER ? dims : 0)
			   + (flags & BP_CB_F_PROJECTION ? comps * dims : 0)
			   + 2 * bits
			   + (flags & BP_CB_F_PAIRS ? 2 * bits : 0)
			   + (flags & BP_CB_F_RECON ? comps + bits : 0));
	if ((uint64_t) len != need)
		FAIL(BP_CB_SIZE);

	memset(cb, 0, sizeof(*cb));
	cb->dims = (uint32_t) dims;
	cb->components = (uint32_t) comps;
	cb->bits = (uint32_t) bits;
#define TAKE(field, type, count) do { cb->field = (const type *) (p + pos); pos += 4 * (size_t) (count); } while (0)
	if (flags & BP_CB_F_CENTER)
		TAKE(center, float, dims);
	if (flags & BP_CB_F_PROJECTION)
		TAKE(projection, float, comps * dims);
	TAKE(src_a, int32_t, bits);
	TAKE(thr_a, float, bits);
	if (flags & BP_CB_F_PAIRS)
	{
		TAKE(src_b, int32_t, bits);
		TAKE(thr_b, float, bits);
	}
	if (flags & BP_CB_F_RECON)
	{
		TAKE(base, float, comps);
		TAKE(delta, float, bits);
	}
#undef TAKE

	for (size_t b = 0; b < bits; b++)
	{
		if (cb->src_a[b] < 0 || (uint64_t) cb->src_a[b] >= comps)
			FAIL(BP_CB_INDEX);
		if (cb->src_b && (cb->src_b[b] < -1 || cb->src_b[b] >= (int64_t) comps))
			FAIL(BP_CB_INDEX);
	}
	if ((cb->center && !all_finite(cb->center, dims))
		|| (cb->projection && !all_finite(cb->projection, comps * dims))
		|| !all_finite(cb->thr_a, bits)
		|| (cb->thr_b && !all_finite(cb->thr_b, bits))
		|| (cb->base && !all_finite(cb->base, comps))
		|| (cb->delta && !all_finite(cb->delta, bits)))
		FAIL(BP_CB_NONFINITE);
	return BP_OK;
}

/* floats up to an 8-byte boundary */
static inline size_t
even(size_t n)
{
	return (n + 1) & ~(size_t) 1;
}

size_t
bp_codebook_scratch_floats(const bp_codebook *cb)
{
	if (cb->rabitq)				/* y, the rotated vector, the encoder's scratch */
		return 2 * even(cb->dims) + bp_ivf_code_bytes(cb->dims, (int) cb->rabitq) / 4 + cb->dims;
	return (size_t) cb->dims + cb->components;
}

static int
factors_finite(const bp_ivf_factors *f)
{
	return finite32(f->norm) && finite32(f->scale) && finite32(f->err) && finite32(f->ipc)
		&& finite32(f->off);
}

/* x (finite, checked) normalized for cosine and rotated into z; y is scratch */
static bp_status
rabitq_rotate(const bp_codebook *cb, const float *x, float *y, float *z, size_t *bad_index)
{
	for (size_t i = 0; i < cb->dims; i++)
	{
		if (!finite32(x[i]))
		{
			if (bad_index)
				*bad_index = i;
			return BP_ERR_NONFINITE_VALUE;
		}
		y[i] = x[i];
	}
	if (cb->metric == BP_METRIC_COSINE)
		bp_ivf_normalize(y, cb->dims);
	bp_ivf_rotate(y, cb->dims, cb->seed, z);
	for (size_t i = 0; i < cb->dims; i++)
		if (!finite32(z[i]))
		{
			/* the rotation keeps the norm: a vector whose norm leaves float overflows here */
			if (bad_index)
				*bad_index = (size_t) -1;
			return BP_ERR_OVERFLOW;
		}
	return BP_OK;
}

static bp_status
rabitq_encode(const bp_codebook *cb, const float *x, float *scratch, uint8_t *out,
			  size_t *bad_index)
{
	float	   *y = scratch,
			   *z = scratch + even(cb->dims),
			   *enc = scratch + 2 * even(cb->dims);
	size_t		planes = bp_ivf_code_bytes(cb->dims, (int) cb->rabitq);
	bp_ivf_factors f;
	bp_status	st = rabitq_rotate(cb, x, y, z, bad_index);

	if (st != BP_OK)
		return st;
	st = bp_ivf_encode(z, cb->center, cb->dims, (int) cb->rabitq, enc, out, &f);
	if (st != BP_OK)
		return st;
	if (!factors_finite(&f))
	{
		if (bad_index)
			*bad_index = (size_t) -1;
		return BP_ERR_OVERFLOW;
	}
	memcpy(out + planes, &f, sizeof(f));
	return BP_OK;
}

/*
 * z = projection @ (x - center) into z[components]; y[dims] is scratch. Checks x finite.
 * Four partial sums in double, combined in a fixed order: the same bits on every build.
 */
static bp_status
transform(const bp_codebook *cb, const float *x, float *y, float *z, size_t *bad_index)
{
	size_t		d = cb->dims;

	for (size_t i = 0; i < d; i++)
	{
		if (!finite32(x[i]))
		{
			if (bad_index)
				*bad_index = i;
			return BP_ERR_NONFINITE_VALUE;
		}
		y[i] = cb->center ? x[i] - cb->center[i] : x[i];
	}
	if (cb->projection == NULL)
	{
		memcpy(z, y, d * sizeof(float));
		return BP_OK;
	}
	for (size_t j = 0; j < cb->components; j++)
	{
		const float *row = cb->projection + j * d;
		double		s0 = 0,
					s1 = 0,
					s2 = 0,
					s3 = 0;
		size_t		i = 0;

		for (; i + 4 <= d; i += 4)
		{
			s0 += (double) row[i] * y[i];
			s1 += (double) row[i + 1] * y[i + 1];
			s2 += (double) row[i + 2] * y[i + 2];
			s3 += (double) row[i + 3] * y[i + 3];
		}
		for (; i < d; i++)
			s0 += (double) row[i] * y[i];
		z[j] = (float) ((s0 + s1) + (s2 + s3));
	}
	return BP_OK;
}

bp_status
bp_codebook_encode_batch(const bp_codebook *cb, const float *x, size_t n, size_t dim,
						 size_t row_stride, uint8_t *out, size_t out_stride,
						 float *scratch, size_t *bad_row, size_t *bad_index)
{
	float	   *y = scratch,
			   *z = scratch + cb->dims;
	size_t		nbytes = bp_code_bytes(cb->bits);

	if (dim == 0)
		return BP_ERR_EMPTY;
	if (dim != cb->dims)
		return BP_ERR_CODEBOOK_DIM_MISMATCH;
	for (size_t r = 0; r < n; r++)
	{
		uint8_t    *o = out + r * out_stride;
		bp_status	st = cb->rabitq ? rabitq_encode(cb, x + r * row_stride, scratch, o, bad_index)
			: transform(cb, x + r * row_stride, y, z, bad_index);

		if (st != BP_OK)
		{
			if (bad_row)
				*bad_row = r;
			return st;
		}
		if (cb->rabitq)
			continue;			/* coded whole by rabitq_encode */
		memset(o, 0, nbytes);
		for (size_t b = 0; b < cb->bits; b++)
		{
			int			bit = z[cb->src_a[b]] > cb->thr_a[b];

			if (!bit && cb->src_b && cb->src_b[b] >= 0)
				bit = z[cb->src_b[b]] > cb->thr_b[b];
			if (bit)
				o[b >> 3] |= (uint8_t) (0x80u >> (b & 7));
		}
	}
	return BP_OK;
}

bp_status
bp_codebook_query_weights(const bp_codebook *cb, const float *q, size_t dim,
						  float *scratch, float *w, double *constant, size_t *bad_index)
{
	float	   *pq = scratch + cb->dims;
	double		c = 0,
				total = 0;
	bp_codebook plain = *cb;
	bp_status	st;

	if (dim == 0)
		return BP_ERR_EMPTY;
	if (dim != cb->dims)
		return BP_ERR_CODEBOOK_DIM_MISMATCH;
	if (cb->base == NULL)		/* RaBitQ codebooks have none: their estimate scores */
		return BP_ERR_NO_LEVELS;
	if (cb->src_b)
		for (size_t b = 0; b < cb->bits; b++)
			if (cb->src_b[b] >= 0)
				return BP_ERR_NO_LEVELS;

	/* q . x_hat = q . center + (P q) . z_hat: project q without centering it */
	plain.center = NULL;
	st = transform(&plain, q, scratch, pq, bad_index);
	if (st != BP_OK)
		return st;
	if (cb->center)
		for (size_t i = 0; i < cb->dims; i++)
			c += (double) q[i] * cb->center[i];
	for (size_t j = 0; j < cb->components; j++)
		c += (double) pq[j] * cb->base[j];
	for (size_t b = 0; b < cb->bits; b++)
	{
		w[b] = pq[cb->src_a[b]] * cb->delta[b];
		total += fabs((double) w[b]);
	}
	*constant = c;
	/* the scores are sums of w in float: refused (not served as Infinity) when the sum of
	 * their magnitudes leaves float, or the constant leaves double */
	if (!(total <= FLT_MAX) || !(fabs(c) <= DBL_MAX))
	{
		if (bad_index)
			*bad_index = (size_t) -1;
		return BP_ERR_OVERFLOW;
	}
	return BP_OK;
}

void
bp_asym_lut(const float *w, size_t bits, float *lut)
{
	size_t		nbytes = bp_code_bytes(bits);

	for (size_t p = 0; p < nbytes; p++)
	{
		float	   *t = lut + 256 * p;
		float		wb[8];

		for (int k = 0; k < 8; k++)
			wb[k] = 8 * p + k < bits ? w[8 * p + k] : 0.0f;
		t[0] = 0.0f;
		for (unsigned v = 1; v < 256; v++)
		{
			unsigned	low = v & (0u - v); /* lowest set bit: bit k is 0x80 >> k */
			int			k = 0;

			while ((0x80u >> k) != low)
				k++;
			t[v] = t[v ^ low] + wb[k];
		}
	}
}

void
bp_asym_scan(const float *lut, size_t nbytes, const uint8_t *codes, size_t n, size_t stride,
			 double constant, double *out)
{
	for (size_t i = 0; i < n; i++)
	{
		const uint8_t *c = codes + i * stride;
		float		s = 0.0f;

		for (size_t p = 0; p < nbytes; p++)
			s += lut[256 * p + c[p]];
		out[i] = constant + s;
	}
}

size_t
bp_codebook_score_bytes(const bp_codebook *cb)
{
	if (cb->rabitq)				/* y and the rotated query, then the int16 table */
		return 2 * even(cb->dims) * sizeof(float) + bp_ivf_query_entries(cb->dims) * sizeof(int16_t);
	/* scratch, the weights, then the table */
	return (bp_codebook_scratch_floats(cb) + cb->bits + 256 * bp_code_bytes(cb->bits)) * sizeof(float);
}

bp_status
bp_codebook_score_prep(const bp_codebook *cb, const float *q, size_t dim, void *work,
					   bp_score_query *sq, size_t *bad_index)
{
	float	   *f = work;
	bp_status	st;

	memset(sq, 0, sizeof(*sq));
	sq->cb = cb;
	sq->nbytes = bp_code_bytes(cb->bits);
	if (dim == 0)
		return BP_ERR_EMPTY;
	if (dim != cb->dims)
		return BP_ERR_CODEBOOK_DIM_MISMATCH;
	if (cb->rabitq)
	{
		float	   *qr = f + even(cb->dims);
		int16_t    *lut = (int16_t *) (f + 2 * even(cb->dims));

		st = rabitq_rotate(cb, q, f, qr, bad_index);
		if (st != BP_OK)
			return st;
		sq->planes = bp_ivf_code_bytes(cb->dims, (int) cb->rabitq);
		bp_ivf_query_prep(qr, cb->dims, (int) cb->rabitq, &sq->iq, lut);
		bp_ivf_query_list(&sq->iq, bp_dot(qr, cb->center, cb->dims),
						  bp_dot(cb->center, cb->center, cb->dims));
		return BP_OK;
	}
	{
		float	   *w = f + bp_codebook_scratch_floats(cb);
		float	   *lut = w + cb->bits;

		st = bp_codebook_query_weights(cb, q, dim, f, w, &sq->constant, bad_index);
		if (st != BP_OK)
			return st;
		bp_asym_lut(w, cb->bits, lut);
		sq->lut = lut;
	}
	return BP_OK;
}

bp_status
bp_codebook_score_scan(const bp_score_query *sq, const uint8_t *codes, size_t n, size_t stride,
					   double *out, size_t *bad_row)
{
	const bp_codebook *cb = sq->cb;

	if (!cb->rabitq)
	{
		bp_asym_scan(sq->lut, sq->nbytes, codes, n, stride, sq->constant, out);
		return BP_OK;
	}
	for (size_t i = 0; i < n; i++)
	{
		const uint8_t *c = codes + i * stride;
		bp_ivf_factors f;
		double		bound,
					est;

		memcpy(&f, c + sq->planes, sizeof(f));
		if (!factors_finite(&f))
		{
			if (bad_row)
				*bad_row = i;
			return BP_ERR_CODE_FACTORS;
		}
		est = bp_ivf_estimate(&sq->iq, &f, c, cb->metric, &bound);
		out[i] = cb->metric == BP_METRIC_COSINE ? 1.0 - est : -est;
	}
	return BP_OK;
}

/*
 * Tensor-Train cores: check them, rebuild the whole tensor, one row or one element, and apply
 * the stored matrix to vectors (y = x @ W) without forming it. The layout is in bp_core.h.
 *
 * Every product is a sequence of "axpy" steps, y[0..len) += a * x[0..len), over contiguous
 * slices of a core. The scalar and AVX2 paths (kernels in bp_tt_kernels.h, compiled once per
 * path) multiply and add separately, element by element in the same order, so they give the
 * same bits. The AVX2 path runs when bp_float_avx2() says so (bp_core.h).
 */
#include <math.h>
#include <string.h>

#include "bp_core.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define BP_X86 1
#include <immintrin.h>
#endif

/* ---- the kernels, once per path ---- */

#define BP_TT_SUFFIX(name) name##_scalar
#define BP_TT_TARGET
#include "bp_tt_kernels.h"
#undef BP_TT_SUFFIX
#undef BP_TT_TARGET

#ifdef BP_X86
#define BP_TT_AVX2 1
#define BP_TT_SUFFIX(name) name##_avx2
#define BP_TT_TARGET __attribute__((target("avx2")))
#include "bp_tt_kernels.h"
#undef BP_TT_SUFFIX
#undef BP_TT_TARGET
#undef BP_TT_AVX2
#endif

/* ---- checks ---- */

static bp_status
malformed(int problem, int core, int *problem_out, int *bad_core)
{
	if (problem_out)
		*problem_out = problem;
	if (bad_core)
		*bad_core = core;
	return BP_ERR_MALFORMED_TT;
}

bp_status
bp_tt_init(bp_tt *tt, int d, const int64_t *shapes, const float *const *cores,
		   const size_t *lens, int check_values, int *problem, int *bad_core)
{
	/* 2^40 floats (4 TiB) bounds every size so products below cannot overflow */
	const uint64_t limit = UINT64_C(1) << 40;
	uint64_t	rows = 1,
				cols = 1;
	int			k;

	memset(tt, 0, sizeof(*tt));
	if (d < 1)
		return malformed(BP_TT_NO_CORES, 0, problem, bad_core);
	if (d > BP_TT_MAX_CORES)
		return malformed(BP_TT_TOO_MANY_CORES, BP_TT_MAX_CORES, problem, bad_core);
	for (k = 0; k < d; k++)
	{
		const int64_t *s = shapes + 4 * k;
		uint64_t	count;
		size_t		t;
		int			a;

		for (a = 0; a < 4; a++)
			if (s[a] < 1 || s[a] > (int64_t) limit)
				return malformed(BP_TT_SHAPE, k, problem, bad_core);
		if (s[0] > BP_TT_MAX_RANK || s[3] > BP_TT_MAX_RANK)
			return malformed(BP_TT_SHAPE, k, problem, bad_core);
		if ((k == 0 && s[0] != 1) || (k == d - 1 && s[3] != 1))
			return malformed(BP_TT_EDGE_RANK, k, problem, bad_core);
		if (k > 0 && (uint64_t) s[0] != tt->r[k])
			return malformed(BP_TT_RANK_MISMATCH, k, problem, bad_core);
		count = (uint64_t) s[0] * (uint64_t) s[3];
		if ((uint64_t) s[1] > limit / count)
			return malformed(BP_TT_SHAPE, k, problem, bad_core);
		count *= (uint64_t) s[1];
		if ((uint64_t) s[2] > limit / count)
			return malformed(BP_TT_SHAPE, k, problem, bad_core);
		count *= (uint64_t) s[2];
		if ((uint64_t) s[1] > limit / rows || (uint64_t) s[2] > limit / cols)
			return malformed(BP_TT_SHAPE, k, problem, bad_core);
		rows *= (uint64_t) s[1];
		cols *= (uint64_t) s[2];
		if (lens[k] != count)
			return malformed(BP_TT_SIZE, k, problem, bad_core);
		if (cores[k] == NULL || ((uintptr_t) cores[k]) % sizeof(float) != 0)
			return malformed(BP_TT_ALIGN, k, problem, bad_core);
		for (t = 0; check_values && t < count; t++)
			if (!isfinite(cores[k][t]))
				return malformed(BP_TT_NONFINITE, k, problem, bad_core);
		tt->r[k] = (uint32_t) s[0];
		tt->m[k] = (uint32_t) s[1];
		tt->n[k] = (uint32_t) s[2];
		tt->r[k + 1] = (uint32_t) s[3];
		tt->core[k] = cores[k];
	}
	if (rows > limit / cols)
		return malformed(BP_TT_SHAPE, d - 1, problem, bad_core);
	tt->d = d;
	tt->rows = rows;
	tt->cols = cols;
	return BP_OK;
}

/* ---- sizes ---- */

/* n[0] * ... * n[k] * r[k+1]: the state after core k of a row */
static uint64_t
row_state(const bp_tt *tt, int k)
{
	uint64_t	s = tt->r[k + 1];
	int			t;

	for (t = 0; t <= k; t++)
		s *= tt->n[t];
	return s;
}

size_t
bp_tt_row_work(const bp_tt *tt)
{
	size_t		total = 0;
	int			k;

	/* one state per core but the last (whose state is the row itself) */
	for (k = 0; k + 1 < tt->d; k++)
		total += (size_t) row_state(tt, k);
	return total > 0 ? total : 1;
}

size_t
bp_tt_element_work(const bp_tt *tt)
{
	uint32_t	rmax = 1;
	int			k;

	for (k = 0; k <= tt->d; k++)
		if (tt->r[k] > rmax)
			rmax = tt->r[k];
	return 2 * (size_t) rmax;
}

/* n[0..k] * m[k+1..d-1] * r[k+1]: the state of one vector after core k (k = -1: the input) */
static uint64_t
matvec_state(const bp_tt *tt, int k)
{
	uint64_t	s = tt->r[k + 1];
	int			t;

	for (t = 0; t < tt->d; t++)
		s *= t <= k ? tt->n[t] : tt->m[t];
	return s;
}

size_t
bp_tt_matvec_work(const bp_tt *tt)
{
	uint64_t	most = 0,
				slice = 0;
	int			k;

	for (k = -1; k < tt->d; k++)
		if (matvec_state(tt, k) > most)
			most = matvec_state(tt, k);
	for (k = 0; k < tt->d; k++)
		if ((uint64_t) tt->n[k] * tt->r[k + 1] > slice)
			slice = (uint64_t) tt->n[k] * tt->r[k + 1];
	return (size_t) (2 * most + slice);
}

/* ---- rows: the state after core k is (n[0..k], r[k+1]), built from the one before ---- */

/* digit k of row index i (row-major over m[]) */
static void
row_digits(const bp_tt *tt, uint64_t i, uint32_t *digit)
{
	int			k;

	for (k = tt->d - 1; k >= 0; k--)
	{
		digit[k] = (uint32_t) (i % tt->m[k]);
		i /= tt->m[k];
	}
}

/* states[k] of a row: offsets into work, the last one being out */
static void
row_states(const bp_tt *tt, float *out, float *work, float **state)
{
	int			k;

	for (k = 0; k + 1 < tt->d; k++)
	{
		state[k] = work;
		work += row_state(tt, k);
	}
	state[tt->d - 1] = out;
}

/* recompute the states of cores from..d-1 for the row whose digits are given */
static void
row_from(const bp_tt *tt, const uint32_t *digit, int from, float **state)
{
	int			avx2 = bp_float_avx2();
	int			k;

	for (k = from; k < tt->d; k++)
	{
		uint64_t	prefix = k == 0 ? 1 : row_state(tt, k - 1) / tt->r[k];

		if (avx2)
		{
#ifdef BP_X86
			tt_row_step_avx2(tt, k, digit[k], k == 0 ? NULL : state[k - 1], prefix, state[k]);
#endif
		}
		else
			tt_row_step_scalar(tt, k, digit[k], k == 0 ? NULL : state[k - 1], prefix, state[k]);
	}
}

bp_status
bp_tt_row(const bp_tt *tt, uint64_t i, float *out, float *work)
{
	uint32_t	digit[BP_TT_MAX_CORES];
	float	   *state[BP_TT_MAX_CORES];

	if (i >= tt->rows)
		return BP_ERR_TT_INDEX;
	row_digits(tt, i, digit);
	row_states(tt, out, work, state);
	row_from(tt, digit, 0, state);
	return bp_check_result(out, tt->cols, NULL);
}

bp_status
bp_tt_reconstruct(const bp_tt *tt, float *out, float *work, size_t *bad_index)
{
	uint32_t	digit[BP_TT_MAX_CORES];
	float	   *state[BP_TT_MAX_CORES];
	uint64_t	i;
	int			k;

	/*
	 * A low-rank (SVD) layout, cores (1, rows, 1, r) and (r, 1, cols, 1), is U @ V: the blocked
	 * kernel of x @ W does it with the rows of U as vectors, adding the same products in the
	 * same order as the row path below, so the bits are the same.
	 */
	if (tt->d == 2 && tt->n[0] == 1 && tt->m[1] == 1)
	{
		(void) bp_dense_matvec(tt->core[1], tt->r[1], tt->cols, tt->core[0], tt->rows, tt->r[1],
							   out, tt->cols, NULL, NULL);
		return bp_check_result(out, tt->rows * tt->cols, bad_index);
	}
	/* rows in order, like an odometer: only the cores whose digit moved are recomputed */
	memset(digit, 0, sizeof(digit));
	row_states(tt, out, work, state);
	row_from(tt, digit, 0, state);
	for (i = 1; i < tt->rows; i++)
	{
		for (k = tt->d - 1; k >= 0; k--)
		{
			if (++digit[k] < tt->m[k])
				break;
			digit[k] = 0;
		}
		/* digits k..d-1 moved: cores before k keep their states */
		state[tt->d - 1] = out + i * tt->cols;
		row_from(tt, digit, k, state);
	}
	return bp_check_result(out, tt->rows * tt->cols, bad_index);
}

bp_status
bp_tt_element(const bp_tt *tt, uint64_t i, uint64_t j, float *out, float *work)
{
	uint32_t	row[BP_TT_MAX_CORES],
				col[BP_TT_MAX_CORES];
	float	   *v = work,
			   *w = work + bp_tt_element_work(tt) / 2;
	int			k;

	if (i >= tt->rows || j >= tt->cols)
		return BP_ERR_TT_INDEX;
	row_digits(tt, i, row);
	for (k = tt->d - 1; k >= 0; k--)
	{
		col[k] = (uint32_t) (j % tt->n[k]);
		j /= tt->n[k];
	}
	v[0] = 1.0f;
	for (k = 0; k < tt->d; k++)
	{
		uint32_t	r0 = tt->r[k],
					r1 = tt->r[k + 1],
					a,
					b;
		const float *g = tt->core[k] + ((size_t) row[k] * tt->n[k] + col[k]) * r1;
		size_t		slab = (size_t) tt->m[k] * tt->n[k] * r1;
		float	   *t;

		for (b = 0; b < r1; b++)
			w[b] = 0.0f;
		/* same order as a row: left rank outer, each output element summed over it */
		for (a = 0; a < r0; a++)
			for (b = 0; b < r1; b++)
				w[b] += v[a] * g[a * slab + b];
		t = v;
		v = w;
		w = t;
	}
	*out = v[0];
	return bp_check_result(out, 1, NULL);
}

uint64_t
bp_tt_matvec_cost(const bp_tt *tt)
{
	uint64_t	cost = 0;
	int			k;

	/* core k: each of the n[0..k-1] * m[k..] * r[k] input values feeds an axpy of n[k] * r[k+1] */
	for (k = 0; k < tt->d; k++)
		cost += matvec_state(tt, k - 1) * tt->n[k] * tt->r[k + 1];
	return cost;
}

int
bp_tt_prefers_dense(const bp_tt *tt)
{
	/* the dense kernel runs about 1.5x as many multiply-adds per second (AVX2, batches) */
	return 3 * bp_tt_matvec_cost(tt) > 2 * tt->rows * tt->cols;
}

static bp_status
check_vectors(const float *x, size_t nvec, size_t x_stride, uint64_t dim, size_t *bad_row,
			  size_t *bad_index)
{
	size_t		v,
				t;

	for (v = 0; v < nvec; v++)
		for (t = 0; t < dim; t++)
			if (!isfinite(x[v * x_stride + t]))
			{
				if (bad_row)
					*bad_row = v;
				if (bad_index)
					*bad_index = t;
				return BP_ERR_NONFINITE_VALUE;
			}
	return BP_OK;
}

/* BP_ERR_OVERFLOW naming the first output element of nvec results that is not finite */
static bp_status
check_outputs(const float *y, size_t nvec, size_t y_stride, uint64_t cols, size_t *bad_row,
			  size_t *bad_index)
{
	size_t		v;

	for (v = 0; v < nvec; v++)
		if (bp_check_result(y + v * y_stride, cols, bad_index) != BP_OK)
		{
			if (bad_row)
				*bad_row = v;
			return BP_ERR_OVERFLOW;
		}
	return BP_OK;
}

/* bp_dense_matvec works on chunks of DENSE_VECS vectors (their outputs stay in L2), and within
 * them on blocks of 4 vectors x 16 columns x DENSE_ROWS rows: the block of W (8 KiB) stays in L1
 * while the chunk's vectors pass over it */
#define DENSE_VECS 64
#define DENSE_ROWS 128

bp_status
bp_dense_matvec(const float *w, uint64_t rows, uint64_t cols, const float *x, size_t nvec,
				size_t x_stride, float *y, size_t y_stride, size_t *bad_row, size_t *bad_index)
{
	int			avx2 = bp_float_avx2();
	bp_status	st = check_vectors(x, nvec, x_stride, rows, bad_row, bad_index);
	size_t		vc;

	if (st != BP_OK)
		return st;
	/* y = x @ W: every element of y sums x[i] * W[i, c] over i in increasing order */
	for (vc = 0; vc < nvec; vc += DENSE_VECS)
	{
		size_t		nchunk = nvec - vc < DENSE_VECS ? nvec - vc : DENSE_VECS;
		uint64_t	i0;
		size_t		v;

		for (v = vc; v < vc + nchunk; v++)
			memset(y + v * y_stride, 0, cols * sizeof(float));
		for (i0 = 0; i0 < rows; i0 += DENSE_ROWS)
		{
			uint64_t	i1 = rows - i0 < DENSE_ROWS ? rows : i0 + DENSE_ROWS;
			size_t		c0;

			for (c0 = 0; c0 < cols; c0 += 16)
			{
				size_t		nc = cols - c0 < 16 ? (size_t) (cols - c0) : 16;
				size_t		v0;

				for (v0 = vc; v0 < vc + nchunk; v0 += 4)
				{
					size_t		nv = vc + nchunk - v0 < 4 ? vc + nchunk - v0 : 4;
					const float *xv = x + v0 * x_stride;
					float	   *yv = y + v0 * y_stride;

#ifdef BP_X86
					if (avx2)
						tt_dense_block_avx2(w, cols, i0, i1, c0, nc, xv, x_stride, nv, yv, y_stride);
					else
#endif
						tt_dense_block_scalar(w, cols, i0, i1, c0, nc, xv, x_stride, nv, yv, y_stride);
				}
			}
		}
	}
	return check_outputs(y, nvec, y_stride, cols, bad_row, bad_index);
}

bp_status
bp_tt_matvec(const bp_tt *tt, const float *x, size_t nvec, size_t x_stride,
			 float *y, size_t y_stride, float *work, size_t *bad_row, size_t *bad_index)
{
	uint64_t	most = 0;
	int			avx2 = bp_float_avx2();
	size_t		v;
	int			k;
	bp_status	st = check_vectors(x, nvec, x_stride, tt->rows, bad_row, bad_index);

	if (st != BP_OK)
		return st;
	for (k = -1; k < tt->d; k++)
		if (matvec_state(tt, k) > most)
			most = matvec_state(tt, k);
	for (v = 0; v < nvec; v++)
	{
		const float *in = x + v * x_stride;
		float	   *bufs[2] = {work, work + most};
		float	   *slice = work + 2 * most;

		for (k = 0; k < tt->d; k++)
		{
			float	   *dst = k == tt->d - 1 ? y + v * y_stride : bufs[k % 2];

			if (avx2)
			{
#ifdef BP_X86
				tt_matvec_step_avx2(tt, k, in, dst, slice);
#endif
			}
			else
				tt_matvec_step_scalar(tt, k, in, dst, slice);
			in = dst;
		}
	}
	return check_outputs(y, nvec, y_stride, tt->cols, bad_row, bad_index);
}

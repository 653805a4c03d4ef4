/*
 * IVF + RaBitQ: the arithmetic of bitpress's approximate index, shared by PostgreSQL's
 * bitpress_ivf access method and the Python/DuckDB binding.
 *
 *  - k-means (Lloyd, seeded, deterministic; spherical for cosine) picks the lists' centroids;
 *  - a fast orthogonal rotation (random signs + Walsh-Hadamard on two overlapping power-of-two
 *    blocks, BP_IVF_ROUNDS times) spreads every residual's energy over all coordinates;
 *  - a vector's code is the rotated residual to its centroid, quantized to 1-4 bits per
 *    dimension (RaBitQ, SIGMOD 2024; the multi-bit form of Extended RaBitQ, 2025), plus four
 *    floats (bp_ivf_factors) that make the estimate of its distance to any query unbiased and
 *    give that estimate an error bound;
 *  - a query is rotated once and becomes a table of partial sums per code byte, so the
 *    estimate for one code is one lookup and add per 8 dimensions (and bit), whatever list the
 *    code is in.
 *
 * Every float sum here runs in one fixed order (8 lanes, then a fixed tree) on every path, so
 * the AVX2 and scalar kernels give the same bits, and an index built on one CPU is read the
 * same on another.
 */
#include <math.h>
#include <string.h>

#include "bp_core.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define BP_X86 1
#include <immintrin.h>
#endif

/* ---- seeded pseudo-random numbers (splitmix64) ---- */

static inline uint64_t
splitmix64(uint64_t *state)
{
	uint64_t	z = (*state += UINT64_C(0x9E3779B97F4A7C15));

	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

uint64_t
bp_ivf_random(uint64_t *state)
{
	return splitmix64(state);
}

/* uniform in [0, n) for n > 0 (the modulo bias is below 2^-32 for the n met here) */
static inline uint64_t
below(uint64_t *state, uint64_t n)
{
	return splitmix64(state) % n;
}

/* ---- float kernels: 8 lanes, multiply then add (never fused), one reduction tree ---- */

static inline float
reduce8(const float *s)
{
	float		t0 = (s[0] + s[4]) + (s[2] + s[6]);
	float		t1 = (s[1] + s[5]) + (s[3] + s[7]);

	return t0 + t1;
}

static float
dot_scalar(const float *a, const float *b, size_t n)
{
	float		acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
	float		tail = 0.0f;
	size_t		t = 0;

	for (; t + 8 <= n; t += 8)
		for (int l = 0; l < 8; l++)
			acc[l] += a[t + l] * b[t + l];
	for (; t < n; t++)
		tail += a[t] * b[t];
	return reduce8(acc) + tail;
}

static float
l2sq_scalar(const float *a, const float *b, size_t n)
{
	float		acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
	float		tail = 0.0f;
	size_t		t = 0;

	for (; t + 8 <= n; t += 8)
		for (int l = 0; l < 8; l++)
		{
			float		d = a[t + l] - b[t + l];

			acc[l] += d * d;
		}
	for (; t < n; t++)
	{
		float		d = a[t] - b[t];

		tail += d * d;
	}
	return reduce8(acc) + tail;
}

#ifdef BP_X86
__attribute__((target("avx2")))
static inline float
reduce256(__m256 v)
{
	/* the same tree as reduce8: (s0+s4)+(s2+s6), (s1+s5)+(s3+s7), then their sum */
	__m128		s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	__m128		t = _mm_add_ps(s, _mm_movehl_ps(s, s));

	return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

__attribute__((target("avx2")))
static float
dot_avx2(const float *a, const float *b, size_t n)
{
	__m256		acc = _mm256_setzero_ps();
	float		tail = 0.0f;
	size_t		t = 0;

	for (; t + 8 <= n; t += 8)
		acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + t), _mm256_loadu_ps(b + t)));
	for (; t < n; t++)
		tail += a[t] * b[t];
	return reduce256(acc) + tail;
}

__attribute__((target("avx2")))
static float
l2sq_avx2(const float *a, const float *b, size_t n)
{
	__m256		acc = _mm256_setzero_ps();
	float		tail = 0.0f;
	size_t		t = 0;

	for (; t + 8 <= n; t += 8)
	{
		__m256		d = _mm256_sub_ps(_mm256_loadu_ps(a + t), _mm256_loadu_ps(b + t));

		acc = _mm256_add_ps(acc, _mm256_mul_ps(d, d));
	}
	for (; t < n; t++)
	{
		float		d = a[t] - b[t];

		tail += d * d;
	}
	return reduce256(acc) + tail;
}
#endif

float
bp_dot(const float *a, const float *b, size_t n)
{
#ifdef BP_X86
	if (bp_float_avx2())
		return dot_avx2(a, b, n);
#endif
	return dot_scalar(a, b, n);
}

float
bp_l2sq(const float *a, const float *b, size_t n)
{
#ifdef BP_X86
	if (bp_float_avx2())
		return l2sq_avx2(a, b, n);
#endif
	return l2sq_scalar(a, b, n);
}

float
bp_dot_with(int avx2, const float *a, const float *b, size_t n)
{
#ifdef BP_X86
	if (avx2 && bp_impl_supported(BP_IMPL_AVX2))
		return dot_avx2(a, b, n);
#endif
	(void) avx2;
	return dot_scalar(a, b, n);
}

/* the key to minimize when assigning to a centroid: L2 squared, or minus the inner product */
static inline float
centroid_key(int spherical, const float *x, const float *c, size_t dim)
{
	return spherical ? -bp_dot(x, c, dim) : bp_l2sq(x, c, dim);
}

size_t
bp_ivf_nearest(const float *x, const float *centroids, size_t k, size_t dim, int spherical,
			   float *key)
{
	size_t		best = 0;
	float		best_key = INFINITY;

	for (size_t j = 0; j < k; j++)
	{
		float		d = centroid_key(spherical, x, centroids + j * dim, dim);

		if (d < best_key)
		{
			best_key = d;
			best = j;
		}
	}
	if (key)
		*key = best_key;
	return best;
}

void
bp_ivf_normalize(float *x, size_t dim)
{
	double		s = 0.0;

	for (size_t t = 0; t < dim; t++)
		s += (double) x[t] * x[t];
	if (s > 0.0)
	{
		float		inv = (float) (1.0 / sqrt(s));

		for (size_t t = 0; t < dim; t++)
			x[t] *= inv;
	}
}

/* ---- k-means ---- */

size_t
bp_kmeans_scratch_bytes(size_t n, size_t k, size_t dim)
{
	return n * (sizeof(uint32_t) + sizeof(float)) + k * sizeof(uint64_t)
		+ k * dim * sizeof(double);
}

bp_status
bp_kmeans(const float *x, size_t n, size_t dim, size_t k, int iters, uint64_t seed, int spherical,
		  float *centroids, void *scratch, bp_progress_fn progress, void *arg)
{
	uint32_t   *assign = (uint32_t *) scratch;
	float	   *dist = (float *) (assign + n);
	uint64_t   *count = (uint64_t *) (dist + n);
	double	   *sum = (double *) (count + k);
	uint64_t	rng = seed;

	if (dim == 0 || k == 0)
		return BP_ERR_EMPTY;
	if (n < k)
		return BP_ERR_DIM_MISMATCH;

	/* initial centroids: k distinct rows drawn without replacement (partial Fisher-Yates) */
	for (size_t i = 0; i < n; i++)
		assign[i] = (uint32_t) i;
	for (size_t j = 0; j < k; j++)
	{
		size_t		r = j + below(&rng, n - j);
		uint32_t	tmp = assign[j];

		assign[j] = assign[r];
		assign[r] = tmp;
		memcpy(centroids + j * dim, x + (size_t) assign[j] * dim, dim * sizeof(float));
		if (spherical)
			bp_ivf_normalize(centroids + j * dim, dim);
	}
	for (size_t i = 0; i < n; i++)
		assign[i] = UINT32_MAX;

	for (int it = 0; it < iters; it++)
	{
		size_t		changed = 0;

		for (size_t i = 0; i < n; i++)
		{
			size_t		j = bp_ivf_nearest(x + i * dim, centroids, k, dim, spherical, &dist[i]);

			if (assign[i] != (uint32_t) j)
			{
				assign[i] = (uint32_t) j;
				changed++;
			}
		}
		if (progress && progress(arg, it, iters))
			return BP_OK;
		if (changed <= n / 1000)	/* fewer than 0.1% of the rows moved: settled */
			break;

		memset(count, 0, k * sizeof(uint64_t));
		memset(sum, 0, k * dim * sizeof(double));
		for (size_t i = 0; i < n; i++)
		{
			double	   *s = sum + (size_t) assign[i] * dim;
			const float *xi = x + i * dim;

			count[assign[i]]++;
			for (size_t t = 0; t < dim; t++)
				s[t] += xi[t];
		}
		for (size_t j = 0; j < k; j++)
		{
			float	   *c = centroids + j * dim;

			if (count[j] == 0)
			{
				/* an empty list takes the row farthest from its centroid (then not again) */
				size_t		far = 0;

				for (size_t i = 1; i < n; i++)
					if (dist[i] > dist[far])
						far = i;
				memcpy(c, x + far * dim, dim * sizeof(float));
				dist[far] = -INFINITY;
			}
			else
				for (size_t t = 0; t < dim; t++)
					c[t] = (float) (sum[j * dim + t] / (double) count[j]);
			if (spherical)
				bp_ivf_normalize(c, dim);
		}
	}
	return BP_OK;
}

/* ---- rotation: BP_IVF_ROUNDS x (signs, Hadamard on the head block, signs, on the tail) ---- */

static void
fht(float *x, size_t len)
{
	for (size_t h = 1; h < len; h <<= 1)
		for (size_t i = 0; i < len; i += h << 1)
			for (size_t j = i; j < i + h; j++)
			{
				float		a = x[j],
							b = x[j + h];

				x[j] = a + b;
				x[j + h] = a - b;
			}
}

static void
flip_signs(float *x, size_t dim, uint64_t *rng)
{
	for (size_t t = 0; t < dim; t += 64)
	{
		uint64_t	bits = splitmix64(rng);

		for (size_t u = t; u < dim && u < t + 64; u++, bits >>= 1)
			if (bits & 1)
				x[u] = -x[u];
	}
}

void
bp_ivf_rotate(const float *x, size_t dim, uint64_t seed, float *out)
{
	size_t		block = 1;
	float		scale;
	uint64_t	rng = seed ^ UINT64_C(0x5851F42D4C957F2D);

	while (block * 2 <= dim)
		block *= 2;
	scale = (float) (1.0 / sqrt((double) block));
	memmove(out, x, dim * sizeof(float));
	for (int r = 0; r < BP_IVF_ROUNDS; r++)
	{
		flip_signs(out, dim, &rng);
		fht(out, block);
		for (size_t t = 0; t < block; t++)
			out[t] *= scale;
		if (block < dim)
		{
			float	   *tail = out + (dim - block);

			flip_signs(out, dim, &rng);
			fht(tail, block);
			for (size_t t = 0; t < block; t++)
				tail[t] *= scale;
		}
	}
}

/* ---- codes ---- */

size_t
bp_ivf_code_bytes(size_t dim, int bits)
{
	return (size_t) bits * ((dim + 63) / 64) * sizeof(uint64_t);
}

static inline void
set_level(uint64_t *planes, size_t words, int bits, size_t t, unsigned level)
{
	for (int j = 0; j < bits; j++)
		if (level & (1u << j))
			planes[(size_t) j * words + t / 64] |= UINT64_C(1) << (t % 64);
}

/* <c - m, u> / |c - m| for the levels c of u at scale s (s = 0: the sign code) */
static double
level_cosine(const float *u, size_t dim, int bits, double s)
{
	double		m = ((1 << bits) - 1) / 2.0,
				top = (1 << bits) - 1,
				num = 0.0,
				den = 0.0;

	for (size_t t = 0; t < dim; t++)
	{
		double		c = floor(u[t] * s + m + 0.5);

		if (c < 0)
			c = 0;
		if (c > top)
			c = top;
		num += (c - m) * u[t];
		den += (c - m) * (c - m);
	}
	return den > 0 ? num / sqrt(den) : 0.0;
}

bp_status
bp_ivf_encode(const float *xr, const float *cr, size_t dim, int bits, float *scratch,
			  uint8_t *code, bp_ivf_factors *f)
{
	size_t		words = (dim + 63) / 64;
	uint64_t   *planes = (uint64_t *) scratch;	/* bits * words, then dim floats */
	float	   *u = (float *) (planes + (size_t) bits * words);
	double		norm2 = 0.0,
				ipc = 0.0,
				norm,
				m = ((1 << bits) - 1) / 2.0,
				best_s = 0.0,
				a,
				cm2 = 0.0;

	if (bits < 1 || bits > BP_IVF_MAX_BITS)
		return BP_ERR_UNKNOWN_IMPL;
	for (size_t t = 0; t < dim; t++)
	{
		double		r = (double) xr[t] - cr[t];

		if (!isfinite(xr[t]))
			return BP_ERR_NONFINITE_VALUE;
		norm2 += r * r;
		ipc += r * cr[t];
	}
	norm = sqrt(norm2);
	memset(planes, 0, (size_t) bits * words * sizeof(uint64_t));
	memset(f, 0, sizeof(*f));
	f->norm = (float) norm;
	f->ipc = (float) ipc;
	if (norm == 0.0 || !isfinite(norm))
	{
		memcpy(code, planes, bp_ivf_code_bytes(dim, bits));
		return isfinite(norm) ? BP_OK : BP_ERR_OVERFLOW;
	}
	for (size_t t = 0; t < dim; t++)
		u[t] = (float) (((double) xr[t] - cr[t]) / norm);

	if (bits > 1)
	{
		/* the scale whose levels point closest to u: a grid from heavy clipping to none */
		double		umax = 0.0,
					best = -1.0;

		for (size_t t = 0; t < dim; t++)
			if (fabs(u[t]) > umax)
				umax = fabs(u[t]);
		for (int g = 1; g <= BP_IVF_SCALE_GRID; g++)
		{
			double		s = (m + 0.5) / umax * g / BP_IVF_SCALE_GRID;
			double		cs = level_cosine(u, dim, bits, s);

			if (cs > best)
			{
				best = cs;
				best_s = s;
			}
		}
	}
	a = 0.0;
	{
	double		ccr = 0.0;		/* sum of (c - m) * cr: the code against its centroid */

	for (size_t t = 0; t < dim; t++)
	{
		double		c;

		if (bits == 1)
			c = u[t] > 0 ? 1 : 0;
		else
		{
			c = floor(u[t] * best_s + m + 0.5);
			if (c < 0)
				c = 0;
			if (c > (1 << bits) - 1)
				c = (1 << bits) - 1;
		}
		set_level(planes, words, bits, t, (unsigned) c);
		a += (c - m) * u[t];
		cm2 += (c - m) * (c - m);
		ccr += (c - m) * cr[t];
	}
	memcpy(code, planes, bp_ivf_code_bytes(dim, bits));
	a /= sqrt(cm2);				/* <x, u>, x = (c - m) / |c - m|: in (0, 1] */
	if (a < 1e-6)
		a = 1e-6;
	f->scale = (float) (norm / (a * sqrt(cm2)));
	f->off = (float) (f->scale * ccr);
	}
	f->err = dim > 1 ? (float) (norm * sqrt(fmax(0.0, 1.0 - a * a)) / a / sqrt((double) dim - 1))
		: 0.0f;
	return BP_OK;
}

/* ---- queries ---- */

size_t
bp_ivf_query_entries(size_t dim)
{
	return (dim + 7) / 8 * 256;
}

void
bp_ivf_query_prep(const float *qr, size_t dim, int bits, bp_ivf_query *q, int16_t *lut)
{
	double		sum = 0.0;
	float		amax = 0.0f,
				inv;

	memset(q, 0, sizeof(*q));
	q->dim = dim;
	q->bytes = (dim + 7) / 8;
	q->bits = bits;
	q->lut = lut;
	for (size_t t = 0; t < dim; t++)
	{
		sum += qr[t];
		if (fabsf(qr[t]) > amax)
			amax = fabsf(qr[t]);
	}
	q->sum = sum;
	q->qq = bp_dot(qr, qr, dim);
	/* integer levels: a byte's eight of them sum within int16 */
	q->unit = amax > 0 ? amax / 4095.0f : 1.0f;
	inv = 1.0f / q->unit;
	/* lut[k][b]: the sum of the levels of the dimensions 8k + j whose bit j is set in byte b */
	for (size_t k = 0; k < q->bytes; k++)
	{
		int16_t    *t = lut + k * 256;
		int16_t		v[8];

		for (int j = 0; j < 8; j++)
			v[j] = 8 * k + j < dim ? (int16_t) lrintf(qr[8 * k + j] * inv) : 0;
		t[0] = 0;
		for (int b = 1; b < 256; b++)
			t[b] = (int16_t) (t[b & (b - 1)] + v[__builtin_ctz((unsigned) b)]);
	}
}

void
bp_ivf_query_list(bp_ivf_query *q, double qc, double cc)
{
	double		y2 = q->qq - 2.0 * qc + cc;	/* |qr - cr|^2 */

	q->ipc = qc;
	q->norm2 = y2 > 0 ? y2 : 0.0;
	q->norm = sqrt(q->norm2);
}

/*
 * The estimate of <r, y> for one code, r the vector's rotated residual and y = qr - cr the
 * query's: scale * (<c, qr> - m sum(qr)) - scale * <c - m, cr>, the last term stored. <c, qr>
 * is a table lookup per code byte (and bit plane) of integer levels (qr in steps of
 * max|qr| / 4095: a 384-d table is 24 KiB, in L1), summed exactly.
 */
static inline double
inner(const bp_ivf_query *q, const bp_ivf_factors *f, const uint8_t *code, int bits)
{
	size_t		plane = bp_ivf_code_bytes(q->dim, 1);
	double		s = 0.0;

	for (int j = 0; j < bits; j++)
	{
		const uint8_t *c = code + (size_t) j * plane;
		const int16_t *t = q->lut;
		int32_t		a0 = 0,
					a1 = 0,
					a2 = 0,
					a3 = 0;
		size_t		k = 0;

		for (; k + 4 <= q->bytes; k += 4, t += 1024)
		{
			a0 += t[c[k]];
			a1 += t[256 + c[k + 1]];
			a2 += t[512 + c[k + 2]];
			a3 += t[768 + c[k + 3]];
		}
		for (; k < q->bytes; k++, t += 256)
			a0 += t[c[k]];
		s += (double) ((a0 + a1) + (a2 + a3)) * (double) (1 << j);
	}
	return (double) f->scale * (s * q->unit - (((1 << bits) - 1) / 2.0) * q->sum) - f->off;
}

static inline double
estimate(const bp_ivf_query *q, const bp_ivf_factors *f, const uint8_t *code, int metric,
		 int bits, double *bound)
{
	double		ip = inner(q, f, code, bits),
				err = (double) f->err * q->norm;

	switch (metric)
	{
		case BP_METRIC_IP:
			*bound = err;
			return -(q->ipc + f->ipc + ip);
		case BP_METRIC_COSINE:
			*bound = err;
			return ((double) f->norm * f->norm + q->norm2 - 2.0 * ip) / 2.0;
		default:
			*bound = 2.0 * err;
			return (double) f->norm * f->norm + q->norm2 - 2.0 * ip;
	}
}

double
bp_ivf_estimate(const bp_ivf_query *q, const bp_ivf_factors *f, const uint8_t *code, int metric,
				double *bound)
{
	return estimate(q, f, code, metric, q->bits, bound);
}

/* the lower bounds of n items (factors and code at fixed offsets in each): one call a page */
#define IVF_LOWER_BOUNDS(METRIC, BITS) \
	for (size_t i = 0; i < n; i++) \
	{ \
		bp_ivf_factors f; \
		double		b, \
					e; \
		memcpy(&f, items[i] + factors_at, sizeof(f)); \
		e = estimate(q, &f, items[i] + code_at, (METRIC), (BITS), &b) - epsilon * b; \
		lb[i] = isnan(e) ? -INFINITY : e; \
	}

void
bp_ivf_lower_bounds(const bp_ivf_query *q, const uint8_t *const *items, size_t n, size_t factors_at,
					size_t code_at, int metric, double epsilon, double *lb)
{
	if (q->bits == 1 && metric == BP_METRIC_COSINE)
		IVF_LOWER_BOUNDS(BP_METRIC_COSINE, 1)
	else if (q->bits == 1)
		IVF_LOWER_BOUNDS(metric, 1)
	else
		IVF_LOWER_BOUNDS(metric, q->bits)
}

double
bp_ivf_distance(int metric, const float *a, const float *b, size_t dim)
{
	switch (metric)
	{
		case BP_METRIC_IP:
			return -(double) bp_dot(a, b, dim);
		case BP_METRIC_COSINE:
			{
				/* b is the normalized query; 1 - cos, as pgvector's <=> */
				double		na = sqrt((double) bp_dot(a, a, dim));

				return na > 0 ? 1.0 - (double) bp_dot(a, b, dim) / na : NAN;
			}
		default:
			return (double) bp_l2sq(a, b, dim);
	}
}

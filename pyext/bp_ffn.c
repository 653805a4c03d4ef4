/*
 * Feed-forward layers y = act(x @ W1 + b1) @ W2 + b2, dense or computing only the neurons a
 * low-rank predictor expects to matter (Deja Vu, Liu et al. 2023; PowerInfer, Song et al. 2023).
 *
 * Stored form (little-endian, 4-byte aligned): header "BPFF", u16 format = 1, u16 flags,
 * u32 d, u32 h, u32 r, u32 activation, u32 0, u32 0 (32 bytes); then, in this order:
 *   float32 weights (no flag 1):  w1t[h][d], b1[h], w2[h][d], b2[d]
 *   int8 weights (flag 1):        s1[h], s2[h], b1[h], b2[d]   (then the int8 blocks, at the end)
 *   predictor (flag 2):           p[r][d], q[r][h]              (z_hat = b1 + (x . p[t]) q[t])
 *   thresholds (flag 4):          thr[h]
 *   off values (flag 8):          c[h], b2c[d]                  (b2c = b2 + c @ W2)
 *   int8 blocks (flag 1):         w1t[h][d], w2[h][d] as int8, row j scaled by s1[j] / s2[j]
 * w1t row j holds neuron j's input weights and w2 row j its output weights, so an active neuron
 * reads two contiguous rows. plugin/bitpress/ffn.py writes this form.
 *
 * Same bits everywhere: a dot product keeps 8 partial sums (element t goes to sum t mod 8) that
 * are combined in one fixed order, the scalar path doing exactly what the AVX2 lanes do; y adds
 * the neurons' rows in increasing neuron order, then b2. Activations use the C library's
 * float erff / tanhf / expf (the predictor's ranking score uses a cheaper form, see score()).
 */
#include <math.h>
#include <string.h>

#include "bp_core.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define BP_X86 1
#include <immintrin.h>
#endif

#define FFN_HEADER 32

/* ---- parsing ---- */

static uint32_t
rd32(const uint8_t *p)
{
	return (uint32_t) p[0] | ((uint32_t) p[1] << 8) | ((uint32_t) p[2] << 16) | ((uint32_t) p[3] << 24);
}

static int
all_finite(const float *x, size_t n)
{
	size_t		t;

	for (t = 0; t < n; t++)
		if (!isfinite(x[t]))
			return 0;
	return 1;
}

bp_status
bp_ffn_parse(const void *buf, size_t len, bp_ffn *f, int *problem)
{
	const uint8_t *b = buf;
	uint32_t	flags,
				d,
				h,
				r,
				act;
	uint64_t	floats,
				int8s = 0,
				need;
	const float *p;
	int			pb = 0;

	memset(f, 0, sizeof(*f));
	if (((uintptr_t) buf & 3) != 0)
		pb = BP_FFN_ALIGN;
	else if (len < FFN_HEADER)
		pb = BP_FFN_SHORT;
	else if (memcmp(b, "BPFF", 4) != 0 || (b[4] | (b[5] << 8)) != 1)
		pb = BP_FFN_MAGIC;
	if (pb)
		goto bad;
	flags = (uint32_t) (b[6] | (b[7] << 8));
	d = rd32(b + 8);
	h = rd32(b + 12);
	r = rd32(b + 16);
	act = rd32(b + 20);
	if (d < 1 || d > BP_MAX_DIM || h < 1 || h > (1u << 20) || (flags & ~15u) != 0 ||
		((flags & BP_FFN_F_PREDICTOR) ? (r < 1 || r > d) : r != 0))
	{
		pb = BP_FFN_SHAPE;
		goto bad;
	}
	if (act >= BP_ACT_COUNT)
	{
		pb = BP_FFN_ACTIVATION;
		goto bad;
	}
	if (flags & BP_FFN_F_INT8)
	{
		floats = 3 * (uint64_t) h + d;
		int8s = 2 * (uint64_t) h * d;
	}
	else
		floats = 2 * (uint64_t) h * d + h + d;
	if (flags & BP_FFN_F_PREDICTOR)
		floats += (uint64_t) r * d + (uint64_t) r * h;
	if (flags & BP_FFN_F_THRESHOLDS)
		floats += h;
	if (flags & BP_FFN_F_OFFSETS)
		floats += (uint64_t) h + d;
	need = FFN_HEADER + 4 * floats + ((int8s + 3) & ~(uint64_t) 3);
	if (need != len)
	{
		pb = BP_FFN_SIZE;
		goto bad;
	}
	if (!all_finite((const float *) (b + FFN_HEADER), (size_t) floats))
	{
		pb = BP_FFN_NONFINITE;
		goto bad;
	}
	p = (const float *) (b + FFN_HEADER);
	f->d = d;
	f->h = h;
	f->r = r;
	f->activation = (int) act;
	if (flags & BP_FFN_F_INT8)
	{
		f->s1 = p;
		p += h;
		f->s2 = p;
		p += h;
		f->b1 = p;
		p += h;
		f->b2 = p;
		p += d;
	}
	else
	{
		f->w1t = p;
		p += (size_t) h * d;
		f->b1 = p;
		p += h;
		f->w2 = p;
		p += (size_t) h * d;
		f->b2 = p;
		p += d;
	}
	if (flags & BP_FFN_F_PREDICTOR)
	{
		f->p = p;
		p += (size_t) r * d;
		f->q = p;
		p += (size_t) r * h;
	}
	if (flags & BP_FFN_F_THRESHOLDS)
	{
		f->thr = p;
		p += h;
	}
	if (flags & BP_FFN_F_OFFSETS)
	{
		f->c = p;
		p += h;
		f->b2c = p;
		p += d;
	}
	if (flags & BP_FFN_F_INT8)
	{
		f->w1q = (const int8_t *) p;
		f->w2q = f->w1q + (size_t) h * d;
	}
	return BP_OK;
bad:
	if (problem)
		*problem = pb;
	return BP_ERR_MALFORMED_FFN;
}

/* ---- kernels: dot (32 partial sums, one combining order) and axpy, scalar and AVX2 ----
 * Element t of a dot product goes to partial sum t mod 32; the sums are combined as
 * u[l] = (s[l] + s[8 + l]) + (s[16 + l] + s[24 + l]), then ((u0 + u1) + (u2 + u3)) + ((u4 + u5) +
 * (u6 + u7)). The AVX2 path holds the 32 sums in four registers (four independent chains) and
 * the scalar path in an array: the same operations on the same values. */

static float
combine32(const float *s)
{
	float		u[8];
	int			l;

	for (l = 0; l < 8; l++)
		u[l] = (s[l] + s[8 + l]) + (s[16 + l] + s[24 + l]);
	return ((u[0] + u[1]) + (u[2] + u[3])) + ((u[4] + u[5]) + (u[6] + u[7]));
}

static float
dot_scalar(const float *a, const float *b, size_t n)
{
	float		s[32] = {0};
	size_t		t;

	for (t = 0; t < n; t++)
		s[t & 31] += a[t] * b[t];
	return combine32(s);
}

static float
dot_i8_scalar(const int8_t *a, const float *b, size_t n)
{
	float		s[32] = {0};
	size_t		t;

	for (t = 0; t < n; t++)
		s[t & 31] += (float) a[t] * b[t];
	return combine32(s);
}

static void
axpy_scalar(float *y, float a, const float *x, size_t n)
{
	size_t		t;

	for (t = 0; t < n; t++)
		y[t] += a * x[t];
}

static void
axpy_i8_scalar(float *y, float a, const int8_t *x, size_t n)
{
	size_t		t;

	for (t = 0; t < n; t++)
		y[t] += a * (float) x[t];
}

#ifdef BP_X86
__attribute__((target("avx2")))
static float
dot_avx2(const float *a, const float *b, size_t n)
{
	__m256		s0 = _mm256_setzero_ps(),
				s1 = _mm256_setzero_ps(),
				s2 = _mm256_setzero_ps(),
				s3 = _mm256_setzero_ps();
	float		s[32];
	size_t		t = 0;

	for (; t + 32 <= n; t += 32)
	{
		s0 = _mm256_add_ps(s0, _mm256_mul_ps(_mm256_loadu_ps(a + t), _mm256_loadu_ps(b + t)));
		s1 = _mm256_add_ps(s1, _mm256_mul_ps(_mm256_loadu_ps(a + t + 8), _mm256_loadu_ps(b + t + 8)));
		s2 = _mm256_add_ps(s2, _mm256_mul_ps(_mm256_loadu_ps(a + t + 16), _mm256_loadu_ps(b + t + 16)));
		s3 = _mm256_add_ps(s3, _mm256_mul_ps(_mm256_loadu_ps(a + t + 24), _mm256_loadu_ps(b + t + 24)));
	}
	_mm256_storeu_ps(s, s0);
	_mm256_storeu_ps(s + 8, s1);
	_mm256_storeu_ps(s + 16, s2);
	_mm256_storeu_ps(s + 24, s3);
	for (; t < n; t++)
		s[t & 31] += a[t] * b[t];
	return combine32(s);
}

__attribute__((target("avx2")))
static inline __m256
i8x8(const int8_t *p)
{
	return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *) p)));
}

__attribute__((target("avx2")))
static float
dot_i8_avx2(const int8_t *a, const float *b, size_t n)
{
	__m256		s0 = _mm256_setzero_ps(),
				s1 = _mm256_setzero_ps(),
				s2 = _mm256_setzero_ps(),
				s3 = _mm256_setzero_ps();
	float		s[32];
	size_t		t = 0;

	for (; t + 32 <= n; t += 32)
	{
		s0 = _mm256_add_ps(s0, _mm256_mul_ps(i8x8(a + t), _mm256_loadu_ps(b + t)));
		s1 = _mm256_add_ps(s1, _mm256_mul_ps(i8x8(a + t + 8), _mm256_loadu_ps(b + t + 8)));
		s2 = _mm256_add_ps(s2, _mm256_mul_ps(i8x8(a + t + 16), _mm256_loadu_ps(b + t + 16)));
		s3 = _mm256_add_ps(s3, _mm256_mul_ps(i8x8(a + t + 24), _mm256_loadu_ps(b + t + 24)));
	}
	_mm256_storeu_ps(s, s0);
	_mm256_storeu_ps(s + 8, s1);
	_mm256_storeu_ps(s + 16, s2);
	_mm256_storeu_ps(s + 24, s3);
	for (; t < n; t++)
		s[t & 31] += (float) a[t] * b[t];
	return combine32(s);
}

__attribute__((target("avx2")))
static void
axpy_avx2(float *y, float a, const float *x, size_t n)
{
	__m256		va = _mm256_set1_ps(a);
	size_t		t = 0;

	for (; t + 8 <= n; t += 8)
		_mm256_storeu_ps(y + t, _mm256_add_ps(_mm256_loadu_ps(y + t),
											  _mm256_mul_ps(va, _mm256_loadu_ps(x + t))));
	for (; t < n; t++)
		y[t] += a * x[t];
}

__attribute__((target("avx2")))
static void
axpy_i8_avx2(float *y, float a, const int8_t *x, size_t n)
{
	__m256		va = _mm256_set1_ps(a);
	size_t		t = 0;

	for (; t + 8 <= n; t += 8)
		_mm256_storeu_ps(y + t, _mm256_add_ps(_mm256_loadu_ps(y + t), _mm256_mul_ps(va, i8x8(x + t))));
	for (; t < n; t++)
		y[t] += a * (float) x[t];
}
#endif

typedef struct kernels
{
	float		(*dot) (const float *, const float *, size_t);
	float		(*dot_i8) (const int8_t *, const float *, size_t);
	void		(*axpy) (float *, float, const float *, size_t);
	void		(*axpy_i8) (float *, float, const int8_t *, size_t);
} kernels;

static kernels
pick(void)
{
	kernels		k = {dot_scalar, dot_i8_scalar, axpy_scalar, axpy_i8_scalar};

#ifdef BP_X86
	if (bp_float_avx2())
	{
		k.dot = dot_avx2;
		k.dot_i8 = dot_i8_avx2;
		k.axpy = axpy_avx2;
		k.axpy_i8 = axpy_i8_avx2;
	}
#endif
	return k;
}

/* ---- activations ---- */

float
bp_activation(int activation, float z)
{
	switch (activation)
	{
		case BP_ACT_GELU_ERF:
			return 0.5f * z * (1.0f + erff(z * 0.70710678f));
		case BP_ACT_GELU_TANH:
			return 0.5f * z * (1.0f + tanhf(0.79788456f * (z + 0.044715f * z * z * z)));
		case BP_ACT_RELU:
			return z > 0.0f ? z : 0.0f;
		case BP_ACT_SILU:
			return z / (1.0f + expf(-z));
		default:
			return z;
	}
}

/* ---- one neuron, and the layer ---- */

static float
neuron_input(const bp_ffn *f, const kernels *k, uint32_t j, const float *x)
{
	if (f->w1q)
		return f->s1[j] * k->dot_i8(f->w1q + (size_t) j * f->d, x, f->d) + f->b1[j];
	return k->dot(f->w1t + (size_t) j * f->d, x, f->d) + f->b1[j];
}

static void
neuron_output(const bp_ffn *f, const kernels *k, uint32_t j, float a, float *acc)
{
	if (a == 0.0f)
		return;
	if (f->w2q)
		k->axpy_i8(acc, a * f->s2[j], f->w2q + (size_t) j * f->d, f->d);
	else
		k->axpy(acc, a, f->w2 + (size_t) j * f->d, f->d);
}

static void
finish(const bp_ffn *f, const float *acc, float *y)
{
	uint32_t	t;

	for (t = 0; t < f->d; t++)
		y[t] = acc[t] + f->b2[t];
}

size_t
bp_ffn_scratch_floats(const bp_ffn *f)
{
	/* acc[d], u[r], z_hat[h], active[h] (uint32; the scores of the exact selector), and h
	 * floats for the quickselect's copy */
	return (size_t) f->d + f->r + 3 * (size_t) f->h;
}

static bp_status
check_input(const bp_ffn *f, const float *x, size_t dim, size_t *bad_index)
{
	size_t		t;

	if (dim != f->d)
		return BP_ERR_FFN_INPUT_DIM;
	for (t = 0; t < dim; t++)
		if (!isfinite(x[t]))
		{
			if (bad_index)
				*bad_index = t;
			return BP_ERR_NONFINITE_VALUE;
		}
	return BP_OK;
}

bp_status
bp_ffn_dense(const bp_ffn *f, const float *x, size_t dim, float *y, float *scratch,
			 size_t *bad_index)
{
	kernels		k = pick();
	float	   *acc = scratch;
	bp_status	st = check_input(f, x, dim, bad_index);
	uint32_t	j;

	if (st != BP_OK)
		return st;
	memset(acc, 0, sizeof(float) * f->d);
	for (j = 0; j < f->h; j++)
		neuron_output(f, &k, j, bp_activation(f->activation, neuron_input(f, &k, j, x)), acc);
	finish(f, acc, y);
	return bp_check_result(y, f->d, bad_index);
}

/*
 * How much a neuron with predicted pre-activation z is expected to contribute: |act(z)|, with
 * GELU taken as z * sigmoid(1.702 z) (Hendrycks & Gimpel's own approximation), which needs one
 * expf instead of an erf; the score only ranks neurons, their outputs use the exact form. With
 * off values c, the distance from the neuron's off value: |act(z) - c|.
 */
static float
score(int activation, float z, float c)
{
	switch (activation)
	{
		case BP_ACT_GELU_ERF:
		case BP_ACT_GELU_TANH:
			return fabsf(z / (1.0f + expf(-1.702f * z)) - c);
		case BP_ACT_RELU:
			return c == 0.0f ? (z > 0.0f ? z : 0.0f) : fabsf((z > 0.0f ? z : 0.0f) - c);
		case BP_ACT_SILU:
			return fabsf(z / (1.0f + expf(-z)) - c);
		default:
			return fabsf(z - c);
	}
}

/* the predictor's score of each neuron: |act(z_hat)|, z_hat = b1 + sum_t (p[t] . x) q[t] */
static void
predict(const bp_ffn *f, const kernels *k, const float *x, float *u, float *zh)
{
	uint32_t	t,
				j;

	for (t = 0; t < f->r; t++)
		u[t] = k->dot(f->p + (size_t) t * f->d, x, f->d);
	memcpy(zh, f->b1, sizeof(float) * f->h);
	for (t = 0; t < f->r; t++)
		k->axpy(zh, u[t], f->q + (size_t) t * f->h, f->h);
	for (j = 0; j < f->h; j++)
		zh[j] = score(f->activation, zh[j], f->c ? f->c[j] : 0.0f);
}

/* the k-th largest of v[0..n) (1 <= k <= n), by quickselect with a three-way partition on
 * work (a copy): expected O(n) */
static float
kth_largest(const float *v, size_t n, size_t k, float *work)
{
	int64_t		lo = 0,
				hi = (int64_t) n - 1,
				want = (int64_t) k - 1;

	memcpy(work, v, n * sizeof(float));
	for (;;)
	{
		float		pivot = work[lo + (hi - lo) / 2];
		int64_t		lt = lo,
					i = lo,
					gt = hi;

		/* work[lo..lt) > pivot, work[lt..i) == pivot, work(gt..hi] < pivot */
		while (i <= gt)
		{
			float		t = work[i];

			if (t > pivot)
			{
				work[i++] = work[lt];
				work[lt++] = t;
			}
			else if (t < pivot)
			{
				work[i] = work[gt];
				work[gt--] = t;
			}
			else
				i++;
		}
		if (want < lt)
			hi = lt - 1;
		else if (want <= gt)
			return pivot;
		else
			lo = gt + 1;
	}
}

bp_status
bp_ffn_sparse(const bp_ffn *f, const float *x, size_t dim, int64_t k_active, int selector,
			  float *y, float *scratch, size_t *n_active, size_t *bad_index)
{
	kernels		k = pick();
	float	   *acc = scratch;
	float	   *u = acc + f->d;
	float	   *zh = u + f->r;
	uint32_t   *active = (uint32_t *) (zh + f->h);	/* also the quickselect's work */
	bp_status	st = check_input(f, x, dim, bad_index);
	size_t		n = 0,
				t;
	uint32_t	j;

	if (st != BP_OK)
		return st;
	if (k_active < 0 || (uint64_t) k_active > f->h)
		return BP_ERR_FFN_K;
	if (selector == BP_FFN_SELECT_EXACT)
	{
		if (k_active == 0)
			return BP_ERR_FFN_K;
		/* the true pre-activations: the first matmul in full, only the second one sparse */
		for (j = 0; j < f->h; j++)
			zh[j] = neuron_input(f, &k, j, x);
	}
	else
	{
		if (f->p == NULL || (k_active == 0 && f->thr == NULL))
			return BP_ERR_FFN_NO_PREDICTOR;
		predict(f, &k, x, u, zh);
	}
	/* exact: zh becomes the activations (kept for the output), ranked by |act - c| below;
	 * predictor: zh holds the scores */
	if (selector == BP_FFN_SELECT_EXACT)
		for (j = 0; j < f->h; j++)
			zh[j] = bp_activation(f->activation, zh[j]);
	if (k_active > 0)
	{
		float	   *sc = zh;
		float		kth;
		size_t		above = 0,
					ties;

		if (selector == BP_FFN_SELECT_EXACT)
		{
			/* scores |a - c| computed into active[] as floats, values kept in zh */
			sc = (float *) active;
			for (j = 0; j < f->h; j++)
				sc[j] = fabsf(zh[j] - (f->c ? f->c[j] : 0.0f));
		}
		/*
		 * The k largest scores, ties to the lower neuron, in increasing neuron order: T is the
		 * k-th largest score; every neuron above T is in, and those equal to T fill the rest
		 * from the lowest neuron up.
		 */
		kth = kth_largest(sc, f->h, (size_t) k_active, acc + f->d + f->r + f->h + f->h);
		for (j = 0; j < f->h; j++)
			above += sc[j] > kth;
		ties = (size_t) k_active - above;
		/* with the exact selector sc is active[] itself: entry j is read before index n <= j
		 * is written */
		for (j = 0; j < f->h; j++)
			if (sc[j] > kth || (sc[j] == kth && ties > 0 && ties--))
				active[n++] = j;
	}
	else
		for (j = 0; j < f->h; j++)
			if (zh[j] > f->thr[j])
				active[n++] = j;
	memset(acc, 0, sizeof(float) * f->d);
	for (t = 0; t < n; t++)
	{
		uint32_t	i = active[t];
		float		a = selector == BP_FFN_SELECT_EXACT ? zh[i] :
			bp_activation(f->activation, neuron_input(f, &k, i, x));

		neuron_output(f, &k, i, f->c ? a - f->c[i] : a, acc);
	}
	if (f->c)
	{
		for (t = 0; t < f->d; t++)
			y[t] = acc[t] + f->b2c[t];
	}
	else
		finish(f, acc, y);
	if (n_active)
		*n_active = n;
	return bp_check_result(y, f->d, bad_index);
}

/*
 * Tensor-Train kernels, included by bp_tt.c once per path with BP_TT_SUFFIX(name) naming the
 * functions and BP_TT_TARGET giving their target attribute (BP_TT_AVX2 set for the AVX2 path).
 * Not a public header.
 *
 * axpy: y[t] += a * x[t], multiply then add (never fused: -ffp-contract=off and no FMA
 * instruction), so both paths round every element exactly alike.
 */
BP_TT_TARGET
static inline void
BP_TT_SUFFIX(tt_axpy) (float *restrict y, float a, const float *restrict x, size_t len)
{
	size_t		t = 0;

#ifdef BP_TT_AVX2
	__m256		va = _mm256_set1_ps(a);

	for (; t + 16 <= len; t += 16)
	{
		__m256		y0 = _mm256_add_ps(_mm256_loadu_ps(y + t), _mm256_mul_ps(va, _mm256_loadu_ps(x + t)));
		__m256		y1 = _mm256_add_ps(_mm256_loadu_ps(y + t + 8), _mm256_mul_ps(va, _mm256_loadu_ps(x + t + 8)));

		_mm256_storeu_ps(y + t, y0);
		_mm256_storeu_ps(y + t + 8, y1);
	}
	for (; t + 8 <= len; t += 8)
		_mm256_storeu_ps(y + t, _mm256_add_ps(_mm256_loadu_ps(y + t),
											  _mm256_mul_ps(va, _mm256_loadu_ps(x + t))));
#endif
	for (; t < len; t++)
		y[t] += a * x[t];
}

/*
 * One core of a row: dst[p][j][b] = sum_a src[p][a] * G_k[a][i][j][b] for the prefix p over
 * n[0..k-1] (prefix of them), j over n[k], b over r[k+1]. src = NULL stands for [1] (k = 0).
 */
BP_TT_TARGET
static void
BP_TT_SUFFIX(tt_row_step) (const bp_tt *tt, int k, uint32_t i, const float *src, uint64_t prefix,
						   float *dst)
{
	uint32_t	r0 = tt->r[k],
				m = tt->m[k];
	size_t		len = (size_t) tt->n[k] * tt->r[k + 1];
	const float *g = tt->core[k];
	uint64_t	p;
	uint32_t	a;

	for (p = 0; p < prefix; p++)
	{
		float	   *out = dst + p * len;

		memset(out, 0, len * sizeof(float));
		for (a = 0; a < r0; a++)
		{
			float		z = src ? src[p * r0 + a] : 1.0f;

			if (z != 0.0f)
				BP_TT_SUFFIX(tt_axpy) (out, z, g + ((size_t) a * m + i) * len, len);
		}
	}
}

/*
 * One core of x @ W for one vector: src is [p][i][q][a] (p over n[0..k-1], i over m[k], q over
 * m[k+1..d-1], a over r[k]) and dst becomes [p][j][q][b] (j over n[k], b over r[k+1]):
 *     dst[p][j][q][b] = sum_a sum_i src[p][i][q][a] * G_k[a][i][j][b]
 * slice holds n[k] * r[k+1] floats of scratch.
 */
BP_TT_TARGET
static void
BP_TT_SUFFIX(tt_matvec_step) (const bp_tt *tt, int k, const float *src, float *dst, float *slice)
{
	uint32_t	r0 = tt->r[k],
				r1 = tt->r[k + 1],
				m = tt->m[k],
				n = tt->n[k];
	size_t		len = (size_t) n * r1;
	const float *g = tt->core[k];
	uint64_t	np = 1,
				nq = 1,
				p,
				q;
	uint32_t	a,
				i,
				j;
	int			t;

	for (t = 0; t < k; t++)
		np *= tt->n[t];
	for (t = k + 1; t < tt->d; t++)
		nq *= tt->m[t];
	for (p = 0; p < np; p++)
		for (q = 0; q < nq; q++)
		{
			memset(slice, 0, len * sizeof(float));
			for (a = 0; a < r0; a++)
				for (i = 0; i < m; i++)
				{
					float		z = src[((p * m + i) * nq + q) * r0 + a];

					if (z != 0.0f)
						BP_TT_SUFFIX(tt_axpy) (slice, z, g + ((size_t) a * m + i) * len, len);
				}
			for (j = 0; j < n; j++)
				memcpy(dst + ((p * n + j) * nq + q) * r1, slice + (size_t) j * r1,
					   r1 * sizeof(float));
		}
}

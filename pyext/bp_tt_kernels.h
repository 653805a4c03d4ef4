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

/*
 * y[v][c] += sum over i in [i0, i1) of x[v][i] * w[i][c] for nv <= 4 vectors and the columns
 * [c0, c0 + 16) (or fewer at the end): the block of bp_dense_matvec. Each output element adds
 * its terms one at a time in increasing i, multiply then add, whatever the path: the AVX2 path
 * keeps eight 8-float sums in registers over the whole range of i, which changes no bit.
 */
BP_TT_TARGET
static void
BP_TT_SUFFIX(tt_dense_block) (const float *w, size_t cols, uint64_t i0, uint64_t i1, size_t c0,
							  size_t ncols, const float *x, size_t x_stride, size_t nv,
							  float *y, size_t y_stride)
{
	size_t		v,
				c;
	uint64_t	i;

#ifdef BP_TT_AVX2
	if (nv == 4 && ncols == 16)
	{
		__m256		a00 = _mm256_loadu_ps(y + c0),
					a01 = _mm256_loadu_ps(y + c0 + 8),
					a10 = _mm256_loadu_ps(y + y_stride + c0),
					a11 = _mm256_loadu_ps(y + y_stride + c0 + 8),
					a20 = _mm256_loadu_ps(y + 2 * y_stride + c0),
					a21 = _mm256_loadu_ps(y + 2 * y_stride + c0 + 8),
					a30 = _mm256_loadu_ps(y + 3 * y_stride + c0),
					a31 = _mm256_loadu_ps(y + 3 * y_stride + c0 + 8);

		for (i = i0; i < i1; i++)
		{
			const float *wi = w + i * cols + c0;
			__m256		w0 = _mm256_loadu_ps(wi),
						w1 = _mm256_loadu_ps(wi + 8),
						z;

			z = _mm256_set1_ps(x[i]);
			a00 = _mm256_add_ps(a00, _mm256_mul_ps(z, w0));
			a01 = _mm256_add_ps(a01, _mm256_mul_ps(z, w1));
			z = _mm256_set1_ps(x[x_stride + i]);
			a10 = _mm256_add_ps(a10, _mm256_mul_ps(z, w0));
			a11 = _mm256_add_ps(a11, _mm256_mul_ps(z, w1));
			z = _mm256_set1_ps(x[2 * x_stride + i]);
			a20 = _mm256_add_ps(a20, _mm256_mul_ps(z, w0));
			a21 = _mm256_add_ps(a21, _mm256_mul_ps(z, w1));
			z = _mm256_set1_ps(x[3 * x_stride + i]);
			a30 = _mm256_add_ps(a30, _mm256_mul_ps(z, w0));
			a31 = _mm256_add_ps(a31, _mm256_mul_ps(z, w1));
		}
		_mm256_storeu_ps(y + c0, a00);
		_mm256_storeu_ps(y + c0 + 8, a01);
		_mm256_storeu_ps(y + y_stride + c0, a10);
		_mm256_storeu_ps(y + y_stride + c0 + 8, a11);
		_mm256_storeu_ps(y + 2 * y_stride + c0, a20);
		_mm256_storeu_ps(y + 2 * y_stride + c0 + 8, a21);
		_mm256_storeu_ps(y + 3 * y_stride + c0, a30);
		_mm256_storeu_ps(y + 3 * y_stride + c0 + 8, a31);
		return;
	}
	if (ncols == 16)
	{
		for (v = 0; v < nv; v++)
		{
			__m256		a0 = _mm256_loadu_ps(y + v * y_stride + c0),
						a1 = _mm256_loadu_ps(y + v * y_stride + c0 + 8);

			for (i = i0; i < i1; i++)
			{
				__m256		z = _mm256_set1_ps(x[v * x_stride + i]);

				a0 = _mm256_add_ps(a0, _mm256_mul_ps(z, _mm256_loadu_ps(w + i * cols + c0)));
				a1 = _mm256_add_ps(a1, _mm256_mul_ps(z, _mm256_loadu_ps(w + i * cols + c0 + 8)));
			}
			_mm256_storeu_ps(y + v * y_stride + c0, a0);
			_mm256_storeu_ps(y + v * y_stride + c0 + 8, a1);
		}
		return;
	}
#endif
	for (v = 0; v < nv; v++)
		for (i = i0; i < i1; i++)
		{
			float		z = x[v * x_stride + i];
			float	   *yv = y + v * y_stride;
			const float *wi = w + i * cols;

			for (c = c0; c < c0 + ncols; c++)
				yv[c] += z * wi[c];
		}
}

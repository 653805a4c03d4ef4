/*
 * The C core on its own, built with AddressSanitizer and UBSan by tests/test_core_sanitizers.py.
 * Every kernel path the CPU has is checked against a bit-by-bit reference on every length up to
 * 300 bytes, with each buffer placed so that it ends exactly at the end of its allocation: a
 * SIMD tail that reads one byte too far is caught by ASan. binarize is checked against a
 * straightforward reference, including non-finite values and threshold checks.
 * Prints "N passed, 0 failed" and exits 0 when all pass.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bp_core.h"

static int	passed = 0,
			failed = 0;

#define CHECK(cond, ...) do { if (cond) passed++; else { failed++; printf("FAIL: " __VA_ARGS__); printf("\n"); } } while (0)

static uint64_t
ref_hamming(const uint8_t *a, const uint8_t *b, size_t n)
{
	uint64_t	d = 0;

	for (size_t i = 0; i < n; i++)
		for (int k = 0; k < 8; k++)
			d += ((a[i] ^ b[i]) >> k) & 1;
	return d;
}

static uint32_t rng_state = 12345;

static uint32_t
rnd(void)
{
	rng_state = rng_state * 1103515245u + 12345u;
	return rng_state >> 8;
}

static void
test_hamming_paths(void)
{
	for (int impl = 0; impl < BP_IMPL_COUNT; impl++)
	{
		if (!bp_impl_supported((bp_impl) impl))
		{
			printf("path %s: not supported by this CPU, not run\n", bp_impl_name((bp_impl) impl));
			continue;
		}
		for (size_t n = 0; n <= 300; n++)
		{
			/* exact-size heap blocks: any read past n bytes is an ASan error */
			uint8_t    *a = malloc(n ? n : 1);
			uint8_t    *b = malloc(n ? n : 1);

			for (size_t i = 0; i < n; i++)
			{
				a[i] = (uint8_t) rnd();
				b[i] = (uint8_t) rnd();
			}
			CHECK(bp_hamming_with((bp_impl) impl, a, b, n) == ref_hamming(a, b, n),
				  "path %s n=%zu", bp_impl_name((bp_impl) impl), n);
			free(a);
			free(b);
		}
		CHECK(bp_set_impl((bp_impl) impl) == BP_OK && bp_get_impl() == (bp_impl) impl, "set %d", impl);
		{
			uint8_t		codes[10 * 48],
						q[48];
			uint64_t	out[10];

			for (size_t i = 0; i < sizeof(codes); i++)
				codes[i] = (uint8_t) rnd();
			memcpy(q, codes + 48 * 3, 48);
			bp_hamming_one_to_many(q, codes, 10, 48, 48, out);
			for (int i = 0; i < 10; i++)
				CHECK(out[i] == ref_hamming(q, codes + 48 * i, 48), "one_to_many %d", i);
			CHECK(out[3] == 0, "self distance");
		}
	}
	CHECK(bp_set_impl(BP_IMPL_AUTO) == BP_OK, "auto");
	CHECK(bp_impl_from_name("sse9") == -2 && bp_impl_from_name("auto") == BP_IMPL_AUTO, "names");
}

static void
test_binarize(void)
{
	for (size_t dim = 1; dim <= 200; dim++)
	{
		float	   *x = malloc(dim * sizeof(float));
		float	   *t = malloc(dim * sizeof(float));
		size_t		nb = bp_code_bytes(dim);
		uint8_t    *out = malloc(nb);
		int			ok = 1;

		for (size_t i = 0; i < dim; i++)
		{
			x[i] = (float) ((int) (rnd() % 2001) - 1000) / 100.0f;
			t[i] = (float) ((int) (rnd() % 201) - 100) / 100.0f;
		}
		CHECK(bp_binarize(x, t, dim, out, NULL) == BP_OK, "binarize dim=%zu", dim);
		for (size_t i = 0; i < nb * 8; i++)
		{
			int			bit = (out[i / 8] >> (7 - i % 8)) & 1;
			int			want = i < dim ? x[i] > t[i] : 0;

			ok &= bit == want;
		}
		CHECK(ok, "binarize bits dim=%zu", dim);
		free(x);
		free(t);
		free(out);
	}
	{
		float		x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
		float		t[9] = {0};
		uint8_t		out[2];
		size_t		bad = 99;

		x[6] = NAN;
		CHECK(bp_binarize(x, NULL, 9, out, &bad) == BP_ERR_NONFINITE_VALUE && bad == 6, "nan at 6");
		x[6] = 1;
		x[8] = -INFINITY;
		CHECK(bp_binarize(x, NULL, 9, out, &bad) == BP_ERR_NONFINITE_VALUE && bad == 8, "-inf in tail");
		x[8] = 1;
		t[2] = INFINITY;
		CHECK(bp_binarize(x, t, 9, out, &bad) == BP_ERR_NONFINITE_THRESHOLD && bad == 2, "inf threshold");
		CHECK(bp_binarize(x, NULL, 0, out, &bad) == BP_ERR_EMPTY, "empty");
		CHECK(bp_binarize(x, NULL, BP_MAX_DIM + 1, out, &bad) == BP_ERR_TOO_LARGE, "too large");
	}
	{
		char		buf[128];

		bp_error_message(buf, sizeof(buf), BP_ERR_BIT_LENGTH_MISMATCH, 3, 2);
		CHECK(strcmp(buf, "different bit lengths 3 and 2") == 0, "message");
		CHECK(strcmp(bp_error_sqlstate(BP_ERR_NONFINITE_VALUE), "22P01") == 0, "sqlstate");
		bp_error_message(buf, 8, BP_ERR_DIM_MISMATCH, 123456, 654321);
		CHECK(strlen(buf) == 7, "truncated message stays terminated");
	}
}

/*
 * Codebooks: a small valid one is parsed and encodes like a direct evaluation of its rules;
 * every truncation and many random byte flips of it are either refused or parsed into a
 * codebook whose indices are in range (encode then runs clean under ASan); the top-k heap
 * agrees with a selection by repeated minimum.
 */
static size_t
build_codebook(uint32_t *w, uint32_t dims, uint32_t comps, uint32_t bits)
{
	size_t		n = 0;
	float		f;

	memcpy(&w[n++], "BPCB", 4);
	w[n++] = 1u | ((uint32_t) (BP_CB_F_CENTER | BP_CB_F_PROJECTION | BP_CB_F_PAIRS | BP_CB_F_RECON) << 16);
	w[n++] = dims;
	w[n++] = comps;
	w[n++] = bits;
	w[n++] = 0;
	for (uint32_t i = 0; i < dims; i++, n++)	/* center */
	{
		f = 0.01f * (float) i;
		memcpy(&w[n], &f, 4);
	}
	for (uint32_t i = 0; i < comps * dims; i++, n++)	/* projection */
	{
		f = (float) ((int) (rnd() % 200) - 100) / 100.0f;
		memcpy(&w[n], &f, 4);
	}
	for (uint32_t b = 0; b < bits; b++)
		w[n++] = b % comps;		/* src_a */
	for (uint32_t b = 0; b < bits; b++, n++)
	{
		f = (b & 1) ? 0.1f : -0.1f;
		memcpy(&w[n], &f, 4);
	}
	for (uint32_t b = 0; b < bits; b++)
		w[n++] = (b % 3 == 0) ? (uint32_t) ((b + 1) % comps) : 0xFFFFFFFFu;	/* src_b */
	for (uint32_t b = 0; b < bits; b++, n++)
	{
		f = 0.2f;
		memcpy(&w[n], &f, 4);
	}
	for (uint32_t j = 0; j < comps; j++, n++)
	{
		f = -0.5f;
		memcpy(&w[n], &f, 4);
	}
	for (uint32_t b = 0; b < bits; b++, n++)
	{
		f = 1.0f;
		memcpy(&w[n], &f, 4);
	}
	return n * 4;
}

static void
test_codebook(void)
{
	uint32_t	words[512];
	uint32_t	copy[512];
	const uint32_t dims = 7,
				comps = 5,
				bits = 13;
	size_t		len = build_codebook(words, dims, comps, bits);
	bp_codebook cb;
	int			problem = 0;
	float		x[7],
				scratch[12],
				w[13];
	uint8_t		code[2];
	double		constant;
	size_t		bad_row,
				bad_index;

	CHECK(bp_codebook_parse(words, len, &cb, &problem) == BP_OK, "valid codebook refused (%d)", problem);
	for (int t = 0; t < 200; t++)
	{
		float		z[5];
		uint8_t		want[2] = {0, 0};

		for (uint32_t i = 0; i < dims; i++)
			x[i] = (float) ((int) (rnd() % 200) - 100) / 50.0f;
		for (uint32_t j = 0; j < comps; j++)
		{
			double		s = 0;

			for (uint32_t i = 0; i < dims; i++)
				s += (double) cb.projection[j * dims + i] * (double) (x[i] - cb.center[i]);
			z[j] = (float) s;
		}
		for (uint32_t b = 0; b < bits; b++)
		{
			int			bit = z[cb.src_a[b]] > cb.thr_a[b] ||
				(cb.src_b[b] >= 0 && z[cb.src_b[b]] > cb.thr_b[b]);

			if (bit)
				want[b / 8] |= (uint8_t) (0x80u >> (b % 8));
		}
		CHECK(bp_codebook_encode_batch(&cb, x, 1, dims, dims, code, 2, scratch, &bad_row, &bad_index) == BP_OK,
			  "encode failed");
		/* rounding of the 4-way sum may differ from this loop only for z within 1e-6 of a cut */
		CHECK(code[0] == want[0] && code[1] == want[1], "codebook encode differs from its rules");
	}
	x[3] = NAN;
	CHECK(bp_codebook_encode_batch(&cb, x, 1, dims, dims, code, 2, scratch, &bad_row, &bad_index)
		  == BP_ERR_NONFINITE_VALUE && bad_index == 3, "NaN not refused");
	CHECK(bp_codebook_encode_batch(&cb, x, 1, dims - 1, dims, code, 2, scratch, &bad_row, &bad_index)
		  == BP_ERR_CODEBOOK_DIM_MISMATCH, "wrong dims not refused");
	CHECK(bp_codebook_query_weights(&cb, x, dims, scratch, w, &constant, &bad_index) == BP_ERR_NO_LEVELS,
		  "pair bits have no asymmetric score");

	/* every truncation is refused */
	for (size_t l = 0; l < len; l++)
		CHECK(bp_codebook_parse(words, l, &cb, &problem) == BP_ERR_MALFORMED_CODEBOOK,
			  "truncation to %zu bytes accepted", l);
	/* random corruption: refused, or parsed with every index in range */
	for (int t = 0; t < 3000; t++)
	{
		int			ok = 1;

		memcpy(copy, words, len);
		((uint8_t *) copy)[rnd() % len] ^= (uint8_t) (1u << (rnd() % 8));
		if (bp_codebook_parse(copy, len, &cb, &problem) != BP_OK)
			continue;
		for (uint32_t b = 0; b < cb.bits; b++)
			ok &= cb.src_a[b] >= 0 && (uint32_t) cb.src_a[b] < cb.components &&
				(cb.src_b == NULL || (cb.src_b[b] >= -1 && cb.src_b[b] < (int32_t) cb.components));
		CHECK(ok && cb.dims == dims && cb.bits == bits, "corrupt codebook parsed with bad shape");
		if (ok && cb.dims == dims && cb.bits == bits)
			bp_codebook_encode_batch(&cb, x, 1, dims, dims, code, 2, scratch, &bad_row, &bad_index);
	}
	CHECK(bp_codebook_parse((const uint8_t *) words + 1, len - 1, &cb, &problem) == BP_ERR_MALFORMED_CODEBOOK
		  && problem == BP_CB_ALIGN, "unaligned buffer accepted");
}

static void
test_topk(void)
{
	uint64_t	keys[500];
	bp_topk_entry heap[64];
	int			used[500];

	for (int t = 0; t < 50; t++)
	{
		size_t		n = 1 + rnd() % 500,
					k = 1 + rnd() % 64,
					got;

		for (size_t i = 0; i < n; i++)
		{
			keys[i] = rnd() % 30;
			used[i] = 0;
		}
		got = bp_topk_smallest_u64(keys, n, k, heap);
		CHECK(got == (k < n ? k : n), "top-k count");
		for (size_t r = 0; r < got; r++)
		{
			size_t		best = n;

			for (size_t i = 0; i < n; i++)
				if (!used[i] && (best == n || keys[i] < keys[best]))
					best = i;
			used[best] = 1;
			CHECK(heap[r].index == best && heap[r].key == (double) keys[best], "top-k rank %zu", r);
		}
	}
}

/* a double-precision reference element of a TT, straight from the formula */
static double
ref_tt_element(const bp_tt *tt, uint64_t i, uint64_t j)
{
	double		v[64],
				w[64];
	uint32_t	row[BP_TT_MAX_CORES],
				col[BP_TT_MAX_CORES];

	for (int k = tt->d - 1; k >= 0; k--)
	{
		row[k] = (uint32_t) (i % tt->m[k]);
		i /= tt->m[k];
		col[k] = (uint32_t) (j % tt->n[k]);
		j /= tt->n[k];
	}
	v[0] = 1.0;
	for (int k = 0; k < tt->d; k++)
	{
		uint32_t	r0 = tt->r[k],
					r1 = tt->r[k + 1],
					m = tt->m[k],
					n = tt->n[k];

		for (uint32_t b = 0; b < r1; b++)
		{
			w[b] = 0.0;
			for (uint32_t a = 0; a < r0; a++)
				w[b] += v[a] * tt->core[k][(((size_t) a * m + row[k]) * n + col[k]) * r1 + b];
		}
		memcpy(v, w, sizeof(double) * r1);
	}
	return v[0];
}

/* Random small TTs: every function against the reference, with work buffers allocated to
 * exactly the size the core asks for (ASan catches a write past them); then broken shapes. */
static void
test_tt(void)
{
	for (int trial = 0; trial < 80; trial++)
	{
		/* the last 20 trials are low-rank (SVD) layouts (1, m, 1, r) (r, 1, n, 1): a fast path */
		int			svd = trial >= 60;
		int			d = svd ? 2 : 1 + (int) (rnd() % 4);
		int64_t		shapes[4 * 4];
		float	   *cores[4];
		const float *ptrs[4];
		size_t		lens[4];
		uint32_t	r = 1;
		bp_tt		tt;
		int			problem = 0,
					bad = 0;

		for (int k = 0; k < d; k++)
		{
			uint32_t	r1 = k == d - 1 ? 1 : 1 + rnd() % 9;

			shapes[4 * k] = r;
			shapes[4 * k + 1] = svd && k == 1 ? 1 : 1 + rnd() % (svd ? 40 : 5);
			shapes[4 * k + 2] = svd && k == 0 ? 1 : 1 + rnd() % (svd ? 40 : 6);
			shapes[4 * k + 3] = r1;
			lens[k] = (size_t) (r * shapes[4 * k + 1] * shapes[4 * k + 2] * r1);
			cores[k] = malloc(lens[k] * sizeof(float));
			for (size_t t = 0; t < lens[k]; t++)
				cores[k][t] = (float) ((int) (rnd() % 2001) - 1000) / 500.0f;
			ptrs[k] = cores[k];
			r = r1;
		}
		CHECK(bp_tt_init(&tt, d, shapes, ptrs, lens, 1, &problem, &bad) == BP_OK, "valid TT refused (%d)", problem);
		{
			size_t		rows = tt.rows,
						cols = tt.cols;
			float	   *whole = malloc(rows * cols * sizeof(float));
			float	   *work = malloc(bp_tt_row_work(&tt) * sizeof(float));
			float	   *row = malloc(cols * sizeof(float));
			float	   *ework = malloc(bp_tt_element_work(&tt) * sizeof(float));
			float	   *mwork = malloc(bp_tt_matvec_work(&tt) * sizeof(float));
			float	   *x = malloc(2 * rows * sizeof(float));
			float	   *y = malloc(2 * cols * sizeof(float));
			float	   *yd = malloc(2 * cols * sizeof(float));
			int			ok = 1;

			bp_tt_reconstruct(&tt, whole, work, NULL);
			for (size_t i = 0; i < rows; i++)
			{
				CHECK(bp_tt_row(&tt, i, row, work) == BP_OK, "row");
				for (size_t j = 0; j < cols; j++)
				{
					float		e;

					ok &= bp_tt_element(&tt, i, j, &e, ework) == BP_OK && e == whole[i * cols + j] &&
						row[j] == e && fabs(e - ref_tt_element(&tt, i, j)) < 1e-3;
				}
			}
			CHECK(ok, "TT element/row/whole disagree (trial %d)", trial);
			for (size_t t = 0; t < 2 * rows; t++)
				x[t] = (float) ((int) (rnd() % 201) - 100) / 50.0f;
			CHECK(bp_tt_matvec(&tt, x, 2, rows, y, cols, mwork, NULL, NULL) == BP_OK, "matvec");
			CHECK(bp_dense_matvec(whole, rows, cols, x, 2, rows, yd, cols, NULL, NULL) == BP_OK, "dense matvec");
			ok = 1;
			for (size_t v = 0; v < 2; v++)
				for (size_t j = 0; j < cols; j++)
				{
					double		s = 0;

					for (size_t i = 0; i < rows; i++)
						s += (double) x[v * rows + i] * whole[i * cols + j];
					ok &= fabs(y[v * cols + j] - s) < 1e-2 && fabs(yd[v * cols + j] - s) < 1e-2;
				}
			CHECK(ok, "TT matvec differs from x @ W (trial %d)", trial);
			CHECK(bp_tt_row(&tt, rows, row, work) == BP_ERR_TT_INDEX, "row out of range");
			CHECK(bp_tt_element(&tt, 0, cols, row, ework) == BP_ERR_TT_INDEX, "column out of range");
			x[rows - 1] = NAN;
			{
				size_t		br = 9,
							bi = 9;

				CHECK(bp_tt_matvec(&tt, x, 1, rows, y, cols, mwork, &br, &bi) == BP_ERR_NONFINITE_VALUE &&
					  br == 0 && bi == rows - 1, "NaN input");
			}
			free(whole);
			free(work);
			free(row);
			free(ework);
			free(mwork);
			free(x);
			free(y);
			free(yd);
		}
		/* break one thing at a time: each is refused with its problem and core */
		if (d >= 2)
		{
			int64_t		bad_shapes[16];

			memcpy(bad_shapes, shapes, sizeof(int64_t) * 4 * d);
			bad_shapes[4] += 1;
			CHECK(bp_tt_init(&tt, d, bad_shapes, ptrs, lens, 1, &problem, &bad) == BP_ERR_MALFORMED_TT &&
				  problem == BP_TT_RANK_MISMATCH && bad == 1, "rank mismatch");
		}
		{
			int64_t		bad_shapes[16];
			size_t		bad_lens[4];

			memcpy(bad_shapes, shapes, sizeof(int64_t) * 4 * d);
			memcpy(bad_lens, lens, sizeof(size_t) * d);
			bad_lens[d - 1] -= 1;
			CHECK(bp_tt_init(&tt, d, shapes, ptrs, bad_lens, 1, &problem, &bad) == BP_ERR_MALFORMED_TT &&
				  problem == BP_TT_SIZE && bad == d - 1, "size");
			bad_shapes[4 * (d - 1) + 3] = 2;
			CHECK(bp_tt_init(&tt, d, bad_shapes, ptrs, lens, 1, &problem, &bad) == BP_ERR_MALFORMED_TT &&
				  problem == BP_TT_EDGE_RANK, "edge rank");
			memcpy(bad_shapes, shapes, sizeof(int64_t) * 4 * d);
			bad_shapes[1] = 0;
			CHECK(bp_tt_init(&tt, d, bad_shapes, ptrs, lens, 1, &problem, &bad) == BP_ERR_MALFORMED_TT &&
				  problem == BP_TT_SHAPE && bad == 0, "zero dimension");
			bad_shapes[1] = INT64_C(1) << 41;
			CHECK(bp_tt_init(&tt, d, bad_shapes, ptrs, lens, 1, &problem, &bad) == BP_ERR_MALFORMED_TT &&
				  problem == BP_TT_SHAPE, "huge dimension");
			cores[0][0] = INFINITY;
			CHECK(bp_tt_init(&tt, d, shapes, ptrs, lens, 1, &problem, &bad) == BP_ERR_MALFORMED_TT &&
				  problem == BP_TT_NONFINITE && bad == 0, "infinity in a core");
			CHECK(bp_tt_init(&tt, 0, shapes, ptrs, lens, 1, &problem, &bad) == BP_ERR_MALFORMED_TT &&
				  problem == BP_TT_NO_CORES, "no cores");
			CHECK(bp_tt_init(&tt, BP_TT_MAX_CORES + 1, shapes, ptrs, lens, 1, &problem, &bad) ==
				  BP_ERR_MALFORMED_TT && problem == BP_TT_TOO_MANY_CORES, "too many cores");
		}
		for (int k = 0; k < d; k++)
			free(cores[k]);
	}
}

/* A small layer: built by hand, every truncation and random corruptions refused or parsed to a
 * sane shape; dense == sparse with every neuron; scalar == AVX2; exact-size buffers (ASan). */
static void
test_ffn(void)
{
	const uint32_t d = 37, h = 53, r = 5;
	size_t		floats = 2 * (size_t) h * d + h + d + (size_t) r * d + (size_t) r * h + h;
	size_t		len = 32 + 4 * floats;
	uint8_t    *blob = malloc(len);
	float	   *p = (float *) (blob + 32);
	uint32_t	hdr[6] = {d, h, r, BP_ACT_GELU_ERF, 0, 0};
	uint16_t	fmt[2] = {1, BP_FFN_F_PREDICTOR | BP_FFN_F_THRESHOLDS};
	bp_ffn		f;
	int			problem = 0;
	float		x[37],
				y[37],
				y2[37];
	float	   *scratch;
	size_t		n = 0;

	memcpy(blob, "BPFF", 4);
	memcpy(blob + 4, fmt, 4);
	memcpy(blob + 8, hdr, 24);
	for (size_t t = 0; t < floats; t++)
		p[t] = (float) ((int) (rnd() % 2001) - 1000) / 4000.0f;
	CHECK(bp_ffn_parse(blob, len, &f, &problem) == BP_OK, "valid layer refused (%d)", problem);
	scratch = malloc(bp_ffn_scratch_floats(&f) * sizeof(float));
	for (uint32_t t = 0; t < d; t++)
		x[t] = (float) ((int) (rnd() % 201) - 100) / 25.0f;
	for (int impl = 0; impl < 3; impl++)
	{
		if (bp_set_impl(impl == 2 ? BP_IMPL_AVX2 : (bp_impl) impl) != BP_OK)
			continue;
		CHECK(bp_ffn_dense(&f, x, d, y, scratch, NULL) == BP_OK, "dense");
		CHECK(bp_ffn_sparse(&f, x, d, h, BP_FFN_SELECT_PREDICTOR, y2, scratch, &n, NULL) == BP_OK && n == h, "sparse all");
		CHECK(memcmp(y, y2, sizeof(y)) == 0, "sparse with every neuron differs from dense");
		{
			static float first[37];

			if (impl == 0)
				memcpy(first, y, sizeof(y));
			CHECK(memcmp(first, y, sizeof(y)) == 0, "path %d differs from scalar", impl);
		}
		for (int64_t k = 1; k <= (int64_t) h; k += 13)
			CHECK(bp_ffn_sparse(&f, x, d, k, BP_FFN_SELECT_PREDICTOR, y2, scratch, &n, NULL) == BP_OK && n == (size_t) k, "top-k count");
		CHECK(bp_ffn_sparse(&f, x, d, 0, BP_FFN_SELECT_PREDICTOR, y2, scratch, &n, NULL) == BP_OK && n <= h, "thresholds");
		CHECK(bp_ffn_sparse(&f, x, d, h, BP_FFN_SELECT_EXACT, y2, scratch, &n, NULL) == BP_OK && n == h &&
			  memcmp(y, y2, sizeof(y)) == 0, "exact selector with every neuron differs from dense");
		for (int64_t k = 1; k <= (int64_t) h; k += 17)
			CHECK(bp_ffn_sparse(&f, x, d, k, BP_FFN_SELECT_EXACT, y2, scratch, &n, NULL) == BP_OK &&
				  n == (size_t) k, "exact top-k count");
	}
	bp_set_impl(BP_IMPL_AUTO);
	CHECK(bp_ffn_sparse(&f, x, d, h + 1, BP_FFN_SELECT_PREDICTOR, y2, scratch, &n, NULL) == BP_ERR_FFN_K, "k too large");
	CHECK(bp_ffn_dense(&f, x, d - 1, y, scratch, NULL) == BP_ERR_FFN_INPUT_DIM, "wrong dims");
	x[3] = NAN;
	CHECK(bp_ffn_dense(&f, x, d, y, scratch, NULL) == BP_ERR_NONFINITE_VALUE, "NaN input");
	for (size_t l = 0; l < len; l += 97)
		CHECK(bp_ffn_parse(blob, l, &f, &problem) == BP_ERR_MALFORMED_FFN, "truncated layer parsed");
	for (int c = 0; c < 2000; c++)
	{
		uint8_t    *copy = malloc(len);
		size_t		at = rnd() % 32;

		memcpy(copy, blob, len);
		copy[at] ^= (uint8_t) (1 + rnd() % 255);
		if (bp_ffn_parse(copy, len, &f, &problem) == BP_OK)
			CHECK(f.d == d && f.h == h && f.r <= d, "corrupt header parsed with a bad shape");
		free(copy);
	}
	free(scratch);
	free(blob);
}

/*
 * RaBitQ codebooks: 37 dimensions (not a multiple of 64), 1-4 bits per dimension, every metric.
 * Buffers are allocated to their exact documented sizes, so ASan catches any overrun of the
 * scratch and work layouts; a code scores itself at least as close as a far vector does; NaN
 * factors are refused at the code they are in; bad shapes are refused at parse.
 */
static void
test_rabitq_codebook(void)
{
	enum {D = 37};
	uint32_t	words[6 + D + 4];
	bp_codebook cb;
	int			problem = 0;

	for (uint32_t per = 1; per <= 4; per++)
		for (int metric = 0; metric <= 2; metric++)
		{
			size_t		cbytes = bp_ivf_code_bytes(D, (int) per) + sizeof(bp_ivf_factors);
			float		x[3 * D];
			float	   *scratch;
			uint8_t    *codes;
			void	   *work;
			double		out[3];
			size_t		bad_row = 0,
						bad_index = 0;
			bp_score_query sq;

			memcpy(&words[0], "BPCB", 4);
			words[1] = 1u | ((uint32_t) (BP_CB_F_RABITQ | BP_CB_F_CENTER) << 16);
			words[2] = D;
			words[3] = D;
			words[4] = (uint32_t) (8 * cbytes);
			words[5] = 0;
			for (int i = 0; i < D; i++)
			{
				float		f = 0.01f * (float) (i % 5);

				memcpy(&words[6 + i], &f, 4);
			}
			words[6 + D] = per;
			words[6 + D + 1] = (uint32_t) metric;
			words[6 + D + 2] = 12345u;
			words[6 + D + 3] = 7u;
			CHECK(bp_codebook_parse(words, sizeof(words), &cb, &problem) == BP_OK,
				  "valid RaBitQ codebook refused (%d)", problem);
			CHECK(cb.rabitq == per && cb.seed == ((uint64_t) 7 << 32 | 12345u), "RaBitQ fields not read");
			for (int i = 0; i < 3 * D; i++)
				x[i] = (float) ((int) (rnd() % 200) - 100) / 50.0f;
			for (int i = 0; i < D; i++)
				x[2 * D + i] = -x[i];	/* the third vector points away from the first */
			scratch = malloc(bp_codebook_scratch_floats(&cb) * sizeof(float));
			codes = malloc(3 * cbytes);
			work = malloc(bp_codebook_score_bytes(&cb));
			CHECK(bp_codebook_encode_batch(&cb, x, 3, D, D, codes, cbytes, scratch, &bad_row, &bad_index)
				  == BP_OK, "RaBitQ encode failed");
			CHECK(bp_codebook_score_prep(&cb, x, D, work, &sq, &bad_index) == BP_OK, "score prep failed");
			CHECK(bp_codebook_score_scan(&sq, codes, 3, cbytes, out, &bad_row) == BP_OK, "score failed");
			CHECK(isfinite(out[0]) && isfinite(out[1]) && isfinite(out[2]) && out[0] > out[2],
				  "RaBitQ scores wrong (%d bits, metric %d): %g %g %g", (int) per, metric, out[0], out[1], out[2]);
			{
				float		nan = NAN;

				memcpy(codes + cbytes + cbytes - 4, &nan, 4);
			}
			CHECK(bp_codebook_score_scan(&sq, codes, 3, cbytes, out, &bad_row) == BP_ERR_CODE_FACTORS
				  && bad_row == 1, "NaN factors not refused at their code");
			free(scratch);
			free(codes);
			free(work);
		}
	words[6 + D] = 5;			/* 5 bits per dimension */
	CHECK(bp_codebook_parse(words, sizeof(words), &cb, &problem) == BP_ERR_MALFORMED_CODEBOOK
		  && problem == BP_CB_SHAPE, "5 bits per dimension accepted");
	words[6 + D] = 1;
	words[4] += 8;				/* bits that do not match the shape */
	CHECK(bp_codebook_parse(words, sizeof(words), &cb, &problem) == BP_ERR_MALFORMED_CODEBOOK,
		  "RaBitQ bits not matching accepted");
	words[1] |= (uint32_t) BP_CB_F_RECON << 16;	/* another flag beside it */
	CHECK(bp_codebook_parse(words, sizeof(words), &cb, &problem) == BP_ERR_MALFORMED_CODEBOOK,
		  "RaBitQ with levels accepted");
}

int
main(void)
{
	bp_init();
	printf("kernel path chosen at load: %s\n", bp_impl_name(bp_get_impl()));
	test_hamming_paths();
	test_binarize();
	test_codebook();
	test_rabitq_codebook();
	test_topk();
	test_tt();
	test_ffn();
	printf("%d passed, %d failed\n", passed, failed);
	return failed != 0;
}

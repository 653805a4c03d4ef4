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

int
main(void)
{
	bp_init();
	printf("kernel path chosen at load: %s\n", bp_impl_name(bp_get_impl()));
	test_hamming_paths();
	test_binarize();
	printf("%d passed, %d failed\n", passed, failed);
	return failed != 0;
}

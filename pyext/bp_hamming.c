/*
 * hamming: popcount(a XOR b) over byte strings, with one path per instruction set.
 *
 * Every path is compiled into every build; the ones beyond the baseline carry a
 * __attribute__((target(...))) of their own, so no file is built with -march=native and one
 * binary runs on any x86-64 CPU. bp_init() checks the CPU once at load time and points the
 * dispatch at the fastest supported path; bp_set_impl() forces one (tests, benchmarks).
 */
#include <string.h>

#include "bp_core.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define BP_X86 1
#include <immintrin.h>
#endif

typedef uint64_t (*hamming_fn) (const uint8_t *a, const uint8_t *b, size_t nbytes);

static inline uint64_t
load64(const uint8_t *p)
{
	uint64_t	v;

	memcpy(&v, p, sizeof(v));
	return v;
}

/* ---- scalar: portable SWAR popcount, no special instruction ---- */

static inline uint64_t
popcount64_swar(uint64_t x)
{
	x = x - ((x >> 1) & 0x5555555555555555ULL);
	x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (x * 0x0101010101010101ULL) >> 56;
}

static uint64_t
hamming_scalar(const uint8_t *a, const uint8_t *b, size_t nbytes)
{
	uint64_t	d = 0;
	size_t		i = 0;

	for (; i + 8 <= nbytes; i += 8)
		d += popcount64_swar(load64(a + i) ^ load64(b + i));
	for (; i < nbytes; i++)
		d += popcount64_swar((uint64_t) (a[i] ^ b[i]));
	return d;
}

#ifdef BP_X86

/* ---- popcnt: 64-bit words through the POPCNT instruction, four accumulators ---- */

__attribute__((target("popcnt")))
static uint64_t
hamming_popcnt(const uint8_t *a, const uint8_t *b, size_t nbytes)
{
	uint64_t	d0 = 0,
				d1 = 0,
				d2 = 0,
				d3 = 0;
	size_t		i = 0;

	for (; i + 32 <= nbytes; i += 32)
	{
		d0 += (uint64_t) __builtin_popcountll(load64(a + i) ^ load64(b + i));
		d1 += (uint64_t) __builtin_popcountll(load64(a + i + 8) ^ load64(b + i + 8));
		d2 += (uint64_t) __builtin_popcountll(load64(a + i + 16) ^ load64(b + i + 16));
		d3 += (uint64_t) __builtin_popcountll(load64(a + i + 24) ^ load64(b + i + 24));
	}
	for (; i + 8 <= nbytes; i += 8)
		d0 += (uint64_t) __builtin_popcountll(load64(a + i) ^ load64(b + i));
	for (; i < nbytes; i++)
		d1 += (uint64_t) __builtin_popcount((unsigned) (a[i] ^ b[i]));
	return d0 + d1 + d2 + d3;
}

/* ---- avx2: nibble lookup with vpshufb, summed with vpsadbw (Mula, Kurz, Lemire 2018) ---- */

__attribute__((target("avx2,popcnt")))
static uint64_t
hamming_avx2(const uint8_t *a, const uint8_t *b, size_t nbytes)
{
	const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
										 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
	const __m256i low = _mm256_set1_epi8(0x0f);
	const __m256i zero = _mm256_setzero_si256();
	__m256i		acc = _mm256_setzero_si256();
	size_t		i = 0;
	uint64_t	d;

	while (i + 32 <= nbytes)
	{
		/* per-byte counts reach at most 8 * 8 = 64 before they are widened */
		__m256i		local = _mm256_setzero_si256();

		for (int k = 0; k < 8 && i + 32 <= nbytes; k++, i += 32)
		{
			__m256i		x = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *) (a + i)),
											 _mm256_loadu_si256((const __m256i *) (b + i)));
			__m256i		lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low));
			__m256i		hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));

			local = _mm256_add_epi8(local, _mm256_add_epi8(lo, hi));
		}
		acc = _mm256_add_epi64(acc, _mm256_sad_epu8(local, zero));
	}
	d = (uint64_t) _mm256_extract_epi64(acc, 0) + (uint64_t) _mm256_extract_epi64(acc, 1) +
		(uint64_t) _mm256_extract_epi64(acc, 2) + (uint64_t) _mm256_extract_epi64(acc, 3);
	for (; i + 8 <= nbytes; i += 8)
		d += (uint64_t) __builtin_popcountll(load64(a + i) ^ load64(b + i));
	for (; i < nbytes; i++)
		d += (uint64_t) __builtin_popcount((unsigned) (a[i] ^ b[i]));
	return d;
}

/* ---- avx512: VPOPCNTDQ on 64-byte blocks, the rest in one masked load (AVX512BW) ----
 * A short code (48 bytes for 384 bits) is then one block instead of six scalar POPCNTs. */
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt")))
static uint64_t
hamming_avx512(const uint8_t *a, const uint8_t *b, size_t nbytes)
{
	__m512i		acc = _mm512_setzero_si512();
	size_t		i = 0;

	for (; i + 64 <= nbytes; i += 64)
	{
		__m512i		x = _mm512_xor_si512(_mm512_loadu_si512((const void *) (a + i)),
										 _mm512_loadu_si512((const void *) (b + i)));

		acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(x));
	}
	if (i < nbytes)
	{
		/* the mask stops the loads at the last byte: nothing past the buffers is read */
		__mmask64	m = (UINT64_C(1) << (nbytes - i)) - 1;	/* nbytes - i < 64 */
		__m512i		x = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, a + i),
										 _mm512_maskz_loadu_epi8(m, b + i));

		acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(x));
	}
	return (uint64_t) _mm512_reduce_add_epi64(acc);
}

#endif							/* BP_X86 */

static const hamming_fn impls[BP_IMPL_COUNT] = {
	hamming_scalar,
#ifdef BP_X86
	hamming_popcnt,
	hamming_avx2,
	hamming_avx512,
#else
	NULL, NULL, NULL,
#endif
};

static const char *const impl_names[BP_IMPL_COUNT] = {"scalar", "popcnt", "avx2", "avx512"};

static hamming_fn current = hamming_scalar;
static bp_impl current_impl = BP_IMPL_SCALAR;
static int	cpu_flags = -1;		/* bit i set: impl i supported; -1 = not yet detected */

static int
detect_cpu(void)
{
	int			flags = 1 << BP_IMPL_SCALAR;

#ifdef BP_X86
	/* libgcc's and compiler-rt's checks include the OS's XSAVE state (XCR0) for AVX state */
	__builtin_cpu_init();
	if (__builtin_cpu_supports("popcnt"))
		flags |= 1 << BP_IMPL_POPCNT;
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt"))
		flags |= 1 << BP_IMPL_AVX2;
	if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
		&& __builtin_cpu_supports("avx512vpopcntdq"))
		flags |= 1 << BP_IMPL_AVX512;
#endif
	return flags;
}

/*
 * For the codes people store (32 to 3072 bits: 4 to 384 bytes) the POPCNT loop is as fast as
 * the AVX2 nibble table, which wins only on long strings. AVX-512 VPOPCNTDQ with its masked
 * tail is the fastest at 256, 384, 768 and 1536 bits on an AMD EPYC with AVX-512 (before the
 * masked tail it was the slowest SIMD path at 384 bits: six scalar POPCNTs after no block).
 * benchmarks/bench_hamming.py measures each path so this order stays honest (BENCHMARKS.md).
 */
static bp_impl
best_impl(void)
{
	if (cpu_flags & (1 << BP_IMPL_AVX512))
		return BP_IMPL_AVX512;
	if (cpu_flags & (1 << BP_IMPL_POPCNT))
		return BP_IMPL_POPCNT;
	return BP_IMPL_SCALAR;
}

void
bp_init(void)
{
	if (cpu_flags >= 0)
		return;
	cpu_flags = detect_cpu();
	current_impl = best_impl();
	current = impls[current_impl];
}

const char *
bp_impl_name(bp_impl impl)
{
	if (impl < 0 || impl >= BP_IMPL_COUNT)
		return NULL;
	return impl_names[impl];
}

int
bp_impl_from_name(const char *name)
{
	if (name == NULL)
		return -2;
	if (strcmp(name, "auto") == 0)
		return BP_IMPL_AUTO;
	for (int i = 0; i < BP_IMPL_COUNT; i++)
		if (strcmp(name, impl_names[i]) == 0)
			return i;
	return -2;
}

int
bp_impl_supported(bp_impl impl)
{
	bp_init();
	if (impl < 0 || impl >= BP_IMPL_COUNT || impls[impl] == NULL)
		return 0;
	return (cpu_flags >> impl) & 1;
}

bp_status
bp_set_impl(bp_impl impl)
{
	bp_init();
	if (impl == BP_IMPL_AUTO)
		impl = best_impl();
	if (!bp_impl_supported(impl))
		return BP_ERR_UNKNOWN_IMPL;
	current_impl = impl;
	current = impls[impl];
	return BP_OK;
}

bp_impl
bp_get_impl(void)
{
	bp_init();
	return current_impl;
}

uint64_t
bp_hamming(const uint8_t *a, const uint8_t *b, size_t nbytes)
{
	return current(a, b, nbytes);
}

uint64_t
bp_hamming_with(bp_impl impl, const uint8_t *a, const uint8_t *b, size_t nbytes)
{
	if (!bp_impl_supported(impl))
		return 0;
	return impls[impl] (a, b, nbytes);
}

void
bp_hamming_one_to_many(const uint8_t *q, const uint8_t *codes, size_t n, size_t nbytes,
					   size_t stride, uint64_t *out)
{
	hamming_fn	fn = current;

	for (size_t i = 0; i < n; i++)
	{
#if defined(__GNUC__)
		/* a page ahead: the hardware prefetcher stops at 4 kB boundaries */
		__builtin_prefetch(codes + i * stride + 1024);
#endif
		out[i] = fn(q, codes + i * stride, nbytes);
	}
}

void
bp_hamming_pairs(const uint8_t *a, const uint8_t *b, size_t n, size_t nbytes,
				 size_t stride_a, size_t stride_b, uint64_t *out)
{
	hamming_fn	fn = current;

	for (size_t i = 0; i < n; i++)
		out[i] = fn(a + i * stride_a, b + i * stride_b, nbytes);
}

int
bp_float_avx2(void)
{
	return current_impl != BP_IMPL_SCALAR && bp_impl_supported(BP_IMPL_AVX2);
}

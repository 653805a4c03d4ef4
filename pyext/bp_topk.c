/* Bounded top-k: a max-heap of the k best (smallest) keys seen so far, never a full sort. */
#include <math.h>
#include <string.h>

#include "bp_core.h"

/* a worse than b: larger key, or equal key and larger index */
static inline int
worse(const bp_topk_entry *a, const bp_topk_entry *b)
{
	return a->key > b->key || (a->key == b->key && a->index > b->index);
}

static void
sift_down(bp_topk_entry *heap, size_t size, size_t i)
{
	for (;;)
	{
		size_t		l = 2 * i + 1,
					r = l + 1,
					m = i;
		bp_topk_entry t;

		if (l < size && worse(&heap[l], &heap[m]))
			m = l;
		if (r < size && worse(&heap[r], &heap[m]))
			m = r;
		if (m == i)
			return;
		t = heap[i];
		heap[i] = heap[m];
		heap[m] = t;
		i = m;
	}
}

void
bp_topk_push(bp_topk_entry *heap, size_t *size, size_t k, double key, uint64_t index)
{
	bp_topk_entry e;

	if (k == 0)
		return;
	if (key != key)				/* NaN ranks last */
		key = HUGE_VAL;
	e.key = key;
	e.index = index;
	if (*size < k)
	{
		size_t		i = (*size)++;

		while (i > 0)
		{
			size_t		p = (i - 1) / 2;

			if (!worse(&e, &heap[p]))
				break;
			heap[i] = heap[p];
			i = p;
		}
		heap[i] = e;
	}
	else if (worse(&heap[0], &e))
	{
		heap[0] = e;
		sift_down(heap, *size, 0);
	}
}

void
bp_topk_finish(bp_topk_entry *heap, size_t size)
{
	/* heapsort in place: the max goes to the end each round, so the result is ascending */
	for (size_t end = size; end > 1; end--)
	{
		bp_topk_entry t = heap[0];

		heap[0] = heap[end - 1];
		heap[end - 1] = t;
		sift_down(heap, end - 1, 0);
	}
}

size_t
bp_topk_smallest_u64(const uint64_t *keys, size_t n, size_t k, bp_topk_entry *heap)
{
	size_t		size = 0;

	for (size_t i = 0; i < n; i++)
		bp_topk_push(heap, &size, k, (double) keys[i], i);
	bp_topk_finish(heap, size);
	return size;
}

size_t
bp_topk_smallest_f64(const double *keys, size_t n, size_t k, bp_topk_entry *heap)
{
	size_t		size = 0;

	for (size_t i = 0; i < n; i++)
		bp_topk_push(heap, &size, k, keys[i], i);
	bp_topk_finish(heap, size);
	return size;
}

size_t
bp_hamming_topk(const uint8_t *q, const uint8_t *codes, size_t n, size_t nbytes,
				size_t stride, size_t k, bp_topk_entry *heap)
{
	uint64_t	dist[256];
	size_t		size = 0;

	for (size_t start = 0; start < n; start += 256)
	{
		size_t		m = n - start < 256 ? n - start : 256;

		bp_hamming_one_to_many(q, codes + start * stride, m, nbytes, stride, dist);
		for (size_t i = 0; i < m; i++)
		{
			/* skip the heap when the candidate cannot enter it */
			if (size == k && (double) dist[i] > heap[0].key)
				continue;
			bp_topk_push(heap, &size, k, (double) dist[i], start + i);
		}
	}
	bp_topk_finish(heap, size);
	return size;
}

static inline int64_t
load_be(const uint8_t *p, int width)
{
	uint64_t	v = 0;

	for (int i = 0; i < width; i++)
		v = (v << 8) | p[i];
	if (width == 4)
		return (int64_t) (int32_t) (uint32_t) v;	/* sign-extend */
	return (int64_t) v;
}

static int
in_sorted(const int64_t *a, size_t n, int64_t x)
{
	size_t		lo = 0,
				hi = n;

	while (lo < hi)
	{
		size_t		mid = lo + (hi - lo) / 2;

		if (a[mid] < x)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && a[lo] == x;
}

void
bp_hamming_topk_segment(const uint8_t *q, const uint8_t *codes, const uint8_t *ids_be,
						int id_width, size_t n, size_t nbytes, const int64_t *skip, size_t nskip,
						bp_topk_entry *heap, size_t *size, size_t k)
{
	uint64_t	dist[256];

	if (k == 0)
		return;
	for (size_t start = 0; start < n; start += 256)
	{
		size_t		m = n - start < 256 ? n - start : 256;

		bp_hamming_one_to_many(q, codes + start * nbytes, m, nbytes, nbytes, dist);
		for (size_t i = 0; i < m; i++)
		{
			int64_t		id;

			/* a candidate worse than the whole full heap cannot enter it (ties may: lower id) */
			if (*size == k && (double) dist[i] > heap[0].key)
				continue;
			id = load_be(ids_be + (size_t) id_width * (start + i), id_width);
			if (nskip && in_sorted(skip, nskip, id))
				continue;
			bp_topk_push(heap, size, k, (double) dist[i], bp_id_key(id));
		}
	}
}

/* a little-endian 64-bit word (one load on x86 and ARM) */
static inline uint64_t
load_le64(const uint8_t *p)
{
	uint64_t	w;

	memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	w = __builtin_bswap64(w);
#endif
	return w;
}

/* Fletcher sums of one buffer into four lanes (a: sum of words, b: sum of the a's). */
static void
checksum_lanes(const uint8_t *p, size_t len, uint64_t a[4], uint64_t b[4])
{
	uint64_t	a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3],
				b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3];
	size_t		i = 0;

	for (; i + 32 <= len; i += 32)
	{
		a0 += load_le64(p + i);
		a1 += load_le64(p + i + 8);
		a2 += load_le64(p + i + 16);
		a3 += load_le64(p + i + 24);
		b0 += a0;
		b1 += a1;
		b2 += a2;
		b3 += a3;
	}
	if (i < len)
	{
		uint8_t		tail[32] = {0};

		memcpy(tail, p + i, len - i);
		a0 += load_le64(tail);
		a1 += load_le64(tail + 8);
		a2 += load_le64(tail + 16);
		a3 += load_le64(tail + 24);
		b0 += a0;
		b1 += a1;
		b2 += a2;
		b3 += a3;
	}
	a[0] = a0, a[1] = a1, a[2] = a2, a[3] = a3;
	b[0] = b0, b[1] = b1, b[2] = b2, b[3] = b3;
}

uint64_t
bp_segment_checksum(const uint8_t *ids, size_t ids_len, const uint8_t *codes, size_t codes_len)
{
	uint64_t	a[4] = {1, 2, 3, 4},
				b[4] = {0, 0, 0, 0},
				h = UINT64_C(0x9E3779B97F4A7C15);

	checksum_lanes(ids, ids_len, a, b);
	/* the ids' length is mixed in: moving the boundary between ids and codes changes the sum */
	a[0] += (uint64_t) ids_len;
	b[0] += a[0];
	checksum_lanes(codes, codes_len, a, b);
	for (int j = 0; j < 4; j++)
	{
		h ^= a[j] + UINT64_C(0x9E3779B97F4A7C15) + (h << 6) + (h >> 2);
		h ^= b[j] + UINT64_C(0x9E3779B97F4A7C15) + (h << 6) + (h >> 2);
	}
	return h ^ (uint64_t) codes_len;
}

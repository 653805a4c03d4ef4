/*
 * bitpress core: the one C implementation shared by the PostgreSQL extension (sql/) and the
 * CPython module (bitpress._core). Plain C99: no postgres.h, no Python.h, no allocation.
 * Callers own every buffer; functions report problems through bp_status, never by aborting.
 */
#ifndef BP_CORE_H
#define BP_CORE_H

#include <stddef.h>
#include <stdint.h>

#define BP_VERSION "0.7.0"

/* Largest vector binarize() accepts. pgvector's vector stops at 16000 dimensions. */
#define BP_MAX_DIM 65536

typedef enum bp_status
{
	BP_OK = 0,
	BP_ERR_EMPTY,				/* a vector with no elements */
	BP_ERR_TOO_LARGE,			/* more than BP_MAX_DIM elements */
	BP_ERR_NONFINITE_VALUE,		/* NaN or +-Inf in a vector: a = element index */
	BP_ERR_NONFINITE_THRESHOLD, /* NaN or +-Inf in thresholds: a = element index */
	BP_ERR_DIM_MISMATCH,		/* a = vector dims, b = threshold dims */
	BP_ERR_BIT_LENGTH_MISMATCH, /* a, b = the two bit lengths */
	BP_ERR_UNKNOWN_IMPL,		/* no such (or no supported) kernel path */
	BP_ERR_MALFORMED_CODEBOOK,	/* a = bp_codebook_problem */
	BP_ERR_CODEBOOK_DIM_MISMATCH,	/* a = vector dims, b = codebook dims */
	BP_ERR_NO_LEVELS,			/* asymmetric score asked of a codebook without levels */
	BP_ERR_MALFORMED_TT,		/* a = bp_tt_problem, b = core index */
	BP_ERR_TT_INDEX,			/* a = index asked, b = its bound (rows or cols) */
	BP_ERR_TT_INPUT_DIM,		/* a = vector dims, b = tensor rows */
	BP_ERR_MALFORMED_FFN,		/* a = bp_ffn_problem */
	BP_ERR_FFN_INPUT_DIM,		/* a = vector dims, b = the layer's input dims */
	BP_ERR_FFN_K,				/* a = k asked, b = the layer's neurons */
	BP_ERR_FFN_NO_PREDICTOR,	/* sparse asked of a layer without predictor (or thresholds) */
	BP_ERR_OVERFLOW,			/* a result is NaN or +-Inf (overflow): a = element index */
	BP_ERR_NEGATIVE_BITS,		/* a = the bit length asked */
	BP_ERR_CODE_BYTES,			/* a = bytes given, b = bits asked: not (b + 7) / 8 bytes */
	BP_ERR_CODE_PADDING,		/* a = bits: the padding bits after them are not zero */
	BP_ERR_CODE_FACTORS			/* a = code: its RaBitQ correction factors are not finite */
} bp_status;

/* Why bp_codebook_parse refused a buffer (the "a" of BP_ERR_MALFORMED_CODEBOOK). */
typedef enum bp_codebook_problem
{
	BP_CB_SHORT = 1,			/* shorter than its header */
	BP_CB_MAGIC,				/* not "BPCB" format 1 */
	BP_CB_SIZE,					/* length does not match dims/components/bits */
	BP_CB_SHAPE,				/* zero or too many dims, components or bits */
	BP_CB_INDEX,				/* a bit names a component that does not exist */
	BP_CB_NONFINITE,			/* NaN or infinity in the parameters */
	BP_CB_ALIGN,				/* buffer not 4-byte aligned (a caller bug) */
	BP_CB_ENDIAN				/* big-endian host: format is little-endian */
} bp_codebook_problem;

/* "lowercase, no period" message for a status, with its numbers filled in; returns buf. */
const char *bp_error_message(char *buf, size_t bufsize, bp_status status, long long a, long long b);

/* SQLSTATE for a status ("22000", "54000", ...): the same in PostgreSQL and in Python. */
const char *bp_error_sqlstate(bp_status status);

/* ---- binarize: bit i = 1 when x[i] > t[i] (t = NULL means 0), packed MSB-first ---- */

static inline size_t
bp_code_bytes(size_t bits)
{
	return (bits + 7) / 8;
}

/* One vector. out must hold bp_code_bytes(dim) bytes; padding bits are written as 0.
 * thresholds may be NULL. On error, *bad_index (if not NULL) names the element. */
bp_status	bp_binarize(const float *x, const float *thresholds, size_t dim, uint8_t *out,
						size_t *bad_index);

/* n vectors of dim floats, rows row_stride floats apart; codes written out_stride bytes apart.
 * thresholds: NULL (all 0), one row shared by all vectors (thr_stride 0), or one row per
 * vector thr_stride floats apart. On error, *bad_row / *bad_index name the element. */
bp_status	bp_binarize_batch(const float *x, size_t n, size_t dim, size_t row_stride,
							  const float *thresholds, size_t thr_stride,
							  uint8_t *out, size_t out_stride,
							  size_t *bad_row, size_t *bad_index);

/* Checks a threshold vector once (finite values only). */
bp_status	bp_check_thresholds(const float *thresholds, size_t dim, size_t *bad_index);

/* Whether n bytes are a code of bits bits: (bits + 7) / 8 of them with zero padding bits
 * (BP_ERR_NEGATIVE_BITS, BP_ERR_CODE_BYTES, BP_ERR_CODE_PADDING otherwise). */
bp_status	bp_check_code_bytes(const uint8_t *b, size_t n, long long bits);

/* IEEE binary16 (pgvector's halfvec) to float, exactly (every half is a float). */
void		bp_half_to_float(const uint16_t *h, size_t n, float *out);

/* Checks n results: BP_ERR_OVERFLOW with *bad_index (if not NULL) at the first NaN or +-Inf.
 * Every computing function of the core calls it on its output, so no engine returns a value
 * that is not one (pgvector refuses them, and pg_restore of a dump holding them fails). */
bp_status	bp_check_result(const float *y, size_t n, size_t *bad_index);

/* ---- hamming: number of differing bits over nbytes bytes (padding bits must be 0) ---- */

typedef enum bp_impl
{
	BP_IMPL_AUTO = -1,
	BP_IMPL_SCALAR = 0,			/* portable C99, SWAR popcount */
	BP_IMPL_POPCNT = 1,			/* x86-64 POPCNT instruction, 64-bit words */
	BP_IMPL_AVX2 = 2,			/* AVX2 nibble-table popcount (Mula et al.) */
	BP_IMPL_AVX512 = 3,			/* AVX-512 VPOPCNTDQ */
	BP_IMPL_COUNT = 4
} bp_impl;

/* Detects the CPU and picks the fastest supported path. Idempotent; call at load time. */
void		bp_init(void);

/* Name of a path ("scalar", "popcnt", "avx2", "avx512"), or NULL. */
const char *bp_impl_name(bp_impl impl);

/* BP_IMPL_* for a name ("auto" gives BP_IMPL_AUTO); -2 for an unknown name. */
int			bp_impl_from_name(const char *name);

/* Whether the path was compiled in and this CPU can run it. */
int			bp_impl_supported(bp_impl impl);

/* Forces a path (BP_IMPL_AUTO = best supported). BP_ERR_UNKNOWN_IMPL if not supported. */
bp_status	bp_set_impl(bp_impl impl);

/* The path in use now. */
bp_impl		bp_get_impl(void);

/* Whether the float kernels (bp_tt.c, bp_ffn.c) take their AVX2 path: whenever the CPU has
 * AVX2, unless the scalar path is forced (the Hamming dispatch may pick popcnt on an AVX2 CPU,
 * which says nothing about float loops). */
int			bp_float_avx2(void);

/* Distance between two codes of nbytes bytes. */
uint64_t	bp_hamming(const uint8_t *a, const uint8_t *b, size_t nbytes);

/* Distance from q to each of n codes stored stride bytes apart: out[i] = hamming(q, codes[i]). */
void		bp_hamming_one_to_many(const uint8_t *q, const uint8_t *codes, size_t n, size_t nbytes,
								   size_t stride, uint64_t *out);

/* Row-wise distances of two arrays of n codes each: out[i] = hamming(a[i], b[i]). */
void		bp_hamming_pairs(const uint8_t *a, const uint8_t *b, size_t n, size_t nbytes,
							 size_t stride_a, size_t stride_b, uint64_t *out);

/* One path directly, whatever is selected (for tests and benchmarks). */
uint64_t	bp_hamming_with(bp_impl impl, const uint8_t *a, const uint8_t *b, size_t nbytes);

/* ---- codebooks: fitted map from a vector to bits (plugin/bitpress/codebook.py has the rules) ----
 *
 * Stored form (little-endian, 4-byte aligned): header "BPCB", u16 format = 1, u16 flags,
 * u32 dims, u32 components, u32 bits, u32 0; then float32/int32 arrays in this order:
 * center[dims] (flag 1), projection[components * dims] (flag 2), src_a[bits], thr_a[bits],
 * src_b[bits], thr_b[bits] (flag 4), base[components], delta[bits] (flag 8).
 *   z = projection @ (x - center)   (without a projection, z = x - center, components = dims)
 *   bit b = z[src_a[b]] > thr_a[b]  ||  (src_b[b] >= 0 && z[src_b[b]] > thr_b[b])
 * Projections accumulate in double, four partial sums in a fixed order, so every build gives
 * the same bits.
 */
#define BP_CB_F_CENTER 1
#define BP_CB_F_PROJECTION 2
#define BP_CB_F_PAIRS 4
#define BP_CB_F_RECON 8
#define BP_CB_F_RABITQ 16
#define BP_CB_HEADER_BYTES 24

/*
 * A RaBitQ codebook (flag 16, with flag 1 and no other) holds center[dims], the rotated
 * centroid cr, then int32 rq[4] = {bits per dimension (1-4), metric (BP_METRIC_*), seed low
 * 32 bits, seed high 32 bits}, and no src/thr arrays. A vector x (normalized first for cosine)
 * is rotated by the seed's orthogonal matrix and coded as the index codes a row of the list of
 * cr (bp_ivf_encode): bp_ivf_code_bytes(dims, bits per dimension) bytes of bit planes, then the
 * five bp_ivf_factors floats (little-endian). The header's bits is 8 times that byte count.
 * Its asymmetric score is the estimate of the index (bp_ivf_estimate): the estimated cosine
 * (cosine), inner product (ip) or minus squared distance (l2) of the query and the vector.
 */

typedef struct bp_codebook
{
	uint32_t	dims;
	uint32_t	components;
	uint32_t	bits;
	const float *center;		/* dims, or NULL */
	const float *projection;	/* components x dims row-major, or NULL */
	const int32_t *src_a;		/* bits */
	const float *thr_a;			/* bits */
	const int32_t *src_b;		/* bits, -1 = single bit; or NULL */
	const float *thr_b;			/* bits, or NULL */
	const float *base;			/* components, or NULL: reconstruction levels */
	const float *delta;			/* bits, or NULL */
	uint32_t	rabitq;			/* RaBitQ codebook: bits per dimension (1-4); 0 otherwise */
	int			metric;			/* RaBitQ: BP_METRIC_* */
	uint64_t	seed;			/* RaBitQ: the rotation's seed */
} bp_codebook;

/* Checks a stored codebook and points cb into buf (no copy; buf must outlive cb and be
 * 4-byte aligned). BP_ERR_MALFORMED_CODEBOOK with *problem set on failure. */
bp_status	bp_codebook_parse(const void *buf, size_t len, bp_codebook *cb, int *problem);

/* Floats of scratch space encode and query_weights need. */
size_t		bp_codebook_scratch_floats(const bp_codebook *cb);

/* Codes of n vectors of dim floats (row_stride apart) into out (out_stride apart,
 * bp_code_bytes(cb->bits) each). scratch: bp_codebook_scratch_floats(cb) floats. */
bp_status	bp_codebook_encode_batch(const bp_codebook *cb, const float *x, size_t n, size_t dim,
									 size_t row_stride, uint8_t *out, size_t out_stride,
									 float *scratch, size_t *bad_row, size_t *bad_index);

/* ---- asymmetric scores: float query against bit codes ----
 * With reconstruction levels, q . x_hat = constant + sum_b w[b] * bit_b. query_weights fills
 * w[bits] and *constant (BP_ERR_NO_LEVELS if the codebook has no
 * levels or has pair bits). asym_lut turns w into a table of bp_code_bytes(bits) * 256
 * floats; asym_scan then scores each code with one lookup per byte. */
bp_status	bp_codebook_query_weights(const bp_codebook *cb, const float *q, size_t dim,
									  float *scratch, float *w, double *constant,
									  size_t *bad_index);
void		bp_asym_lut(const float *w, size_t bits, float *lut);
void		bp_asym_scan(const float *lut, size_t nbytes, const uint8_t *codes, size_t n,
						 size_t stride, double constant, double *out);

/* ---- bounded top-k: indices of the k smallest keys, ascending by (key, index) ----
 * heap: k entries of scratch. Returns the number written (min(k, n)). Ties go to the
 * lower index, so every engine returns the same rows. */
typedef struct bp_topk_entry
{
	double		key;
	uint64_t	index;
} bp_topk_entry;

/* Streaming form: push keys one by one into a heap of capacity k holding *size entries,
 * then finish sorts it ascending. */
void		bp_topk_push(bp_topk_entry *heap, size_t *size, size_t k, double key, uint64_t index);
void		bp_topk_finish(bp_topk_entry *heap, size_t size);

size_t		bp_topk_smallest_u64(const uint64_t *keys, size_t n, size_t k, bp_topk_entry *heap);
size_t		bp_topk_smallest_f64(const double *keys, size_t n, size_t k, bp_topk_entry *heap);

/* Hamming k-NN in one pass: the k codes nearest q, ascending by (distance, index), without
 * storing n distances. heap as above; result in heap[0..return). */
size_t		bp_hamming_topk(const uint8_t *q, const uint8_t *codes, size_t n, size_t nbytes,
							size_t stride, size_t k, bp_topk_entry *heap);

/* ---- packed code segments: many codes in one buffer, with their row ids ----
 * Streaming Hamming k-NN over one segment of n codes (nbytes each, back to back) whose ids are
 * n integers of id_width bytes (4 or 8) stored big-endian (as PostgreSQL's int4send / int8send
 * write them; 4 when every id of the segment fits, which keeps ids to 4 bytes a code). Ids found in skip (sorted
 * ascending, nskip of them) are ignored: rows changed since the segment was written. Pushes into
 * heap (capacity k, *size entries) with key = distance and index = bp_id_key(id), so ties go to
 * the lower id; bp_key_id turns an index back into the id. */
static inline uint64_t
bp_id_key(int64_t id)
{
	return (uint64_t) id ^ UINT64_C(0x8000000000000000);
}

static inline int64_t
bp_key_id(uint64_t key)
{
	return (int64_t) (key ^ UINT64_C(0x8000000000000000));
}

void		bp_hamming_topk_segment(const uint8_t *q, const uint8_t *codes, const uint8_t *ids_be,
									int id_width, size_t n, size_t nbytes,
									const int64_t *skip, size_t nskip,
									bp_topk_entry *heap, size_t *size, size_t k);

/* Checksum of a packed segment (its ids then its codes), stored beside it and checked on every
 * read, so that a flipped byte is reported instead of served. Four independent Fletcher lanes
 * over little-endian 64-bit words (the tail zero-padded), mixed with both lengths: one pass at
 * memory speed, and any change of one word, or the swap of two, changes the result. The same
 * value in every engine (the CPython binding is bitpress._core.segment_checksum). */
uint64_t	bp_segment_checksum(const uint8_t *ids, size_t ids_len, const uint8_t *codes,
								size_t codes_len);

/* ---- Tensor-Train cores: a matrix W (rows x cols) kept as d small cores ----
 *
 * Core k (0-based) is float32 (r[k], m[k], n[k], r[k+1]) in C order, r[0] = r[d] = 1,
 * rows = prod m[k], cols = prod n[k]. With i = (i_0..i_{d-1}) the row-major multi-index of a
 * row over m[] and j likewise over n[]:
 *     W[i, j] = G_0[0, i_0, j_0, :] @ G_1[:, i_1, j_1, :] @ ... @ G_{d-1}[:, i_{d-1}, j_{d-1}, 0]
 * A dense tensor is d = 1: one core (1, rows, cols, 1). Tensors of other ranks are viewed as
 * (shape[0], prod(shape[1:])) and a 1-D tensor as (1, n) (plugin/bitpress/tt.py decomposes).
 * Products are accumulated in float, over the left rank in order, one output element at a
 * time, so every kernel path and both engines give the same bits; an element, its row and
 * the whole tensor agree exactly.
 */
#define BP_TT_MAX_CORES 32
#define BP_TT_MAX_RANK 65536

typedef enum bp_tt_problem
{
	BP_TT_NO_CORES = 1,			/* d = 0 */
	BP_TT_TOO_MANY_CORES,		/* d > BP_TT_MAX_CORES */
	BP_TT_SHAPE,				/* a dimension < 1, a rank too large, or sizes overflow */
	BP_TT_EDGE_RANK,			/* first core's left rank or last core's right rank is not 1 */
	BP_TT_RANK_MISMATCH,		/* left rank differs from the previous core's right rank */
	BP_TT_SIZE,					/* element count differs from the product of its shape */
	BP_TT_NONFINITE,			/* NaN or infinity in the core */
	BP_TT_MISSING,				/* cores are not numbered 0..d-1 (reported by callers) */
	BP_TT_CHECKSUM,				/* stored checksum differs from the data (reported by callers) */
	BP_TT_ALIGN					/* data not 4-byte aligned (a caller bug) */
} bp_tt_problem;

typedef struct bp_tt
{
	int			d;
	uint64_t	rows;
	uint64_t	cols;
	uint32_t	r[BP_TT_MAX_CORES + 1];
	uint32_t	m[BP_TT_MAX_CORES];
	uint32_t	n[BP_TT_MAX_CORES];
	const float *core[BP_TT_MAX_CORES];
} bp_tt;

/* Checks d cores (shapes: d x 4 int64 (r0, m, n, r1); lens: floats in each) and points tt at
 * them (no copy). With check_values, also that every value is finite (one pass over the data:
 * callers that keep cores they have checked once may skip it). BP_ERR_MALFORMED_TT with
 * *problem and *bad_core set on failure. */
bp_status	bp_tt_init(bp_tt *tt, int d, const int64_t *shapes, const float *const *cores,
					   const size_t *lens, int check_values, int *problem, int *bad_core);

/* Floats of scratch space for bp_tt_row / bp_tt_reconstruct, bp_tt_element, bp_tt_matvec. */
size_t		bp_tt_row_work(const bp_tt *tt);
size_t		bp_tt_element_work(const bp_tt *tt);
size_t		bp_tt_matvec_work(const bp_tt *tt);

/* The whole tensor, row-major, into out (rows * cols floats). BP_ERR_OVERFLOW with *bad_index
 * (if not NULL, flat index) when an element overflows. */
bp_status	bp_tt_reconstruct(const bp_tt *tt, float *out, float *work, size_t *bad_index);

/* Row i (cols floats) without forming the tensor. BP_ERR_TT_INDEX when i >= rows,
 * BP_ERR_OVERFLOW when an element overflows. */
bp_status	bp_tt_row(const bp_tt *tt, uint64_t i, float *out, float *work);

/* Element (i, j). BP_ERR_TT_INDEX when out of range, BP_ERR_OVERFLOW when it overflows. */
bp_status	bp_tt_element(const bp_tt *tt, uint64_t i, uint64_t j, float *out, float *work);

/* y = x @ W for nvec vectors x of rows floats (x_stride apart) into y (cols floats, y_stride
 * apart), contracting one core at a time, never forming W. Values must be finite:
 * BP_ERR_NONFINITE_VALUE with *bad_row / *bad_index otherwise; BP_ERR_OVERFLOW with them
 * naming the output element when a result overflows. */
bp_status	bp_tt_matvec(const bp_tt *tt, const float *x, size_t nvec, size_t x_stride,
						 float *y, size_t y_stride, float *work, size_t *bad_row,
						 size_t *bad_index);

/* Multiply-adds of bp_tt_matvec for one vector, and whether x @ W is cheaper on the rebuilt
 * tensor (rows * cols multiply-adds per vector, at about 1.5 times the speed per multiply-add:
 * measured by benchmarks/bench_tt.py) than through the cores: callers that can keep the
 * rebuilt tensor then use bp_dense_matvec. Both engines follow this same rule. */
uint64_t	bp_tt_matvec_cost(const bp_tt *tt);
int			bp_tt_prefers_dense(const bp_tt *tt);

/* y = x @ W for a dense row-major W (rows x cols), same kernels and checks as bp_tt_matvec. */
bp_status	bp_dense_matvec(const float *w, uint64_t rows, uint64_t cols, const float *x,
							size_t nvec, size_t x_stride, float *y, size_t y_stride,
							size_t *bad_row, size_t *bad_index);

/* ---- feed-forward layers: y = act(x @ W1 + b1) @ W2 + b2, dense or sparse (bp_ffn.c) ----
 * The stored form ("BPFF") is described in bp_ffn.c and written by plugin/bitpress/ffn.py. */
typedef enum bp_activation_kind
{
	BP_ACT_GELU_ERF = 0,		/* 0.5 x (1 + erf(x / sqrt 2)) */
	BP_ACT_GELU_TANH = 1,		/* 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) */
	BP_ACT_RELU = 2,
	BP_ACT_SILU = 3,			/* x / (1 + exp(-x)) */
	BP_ACT_COUNT = 4
} bp_activation_kind;

typedef enum bp_ffn_problem
{
	BP_FFN_SHORT = 1,			/* shorter than its header */
	BP_FFN_MAGIC,				/* not "BPFF" format 1 */
	BP_FFN_SHAPE,				/* dims, neurons or rank out of range, unknown flags */
	BP_FFN_ACTIVATION,			/* unknown activation */
	BP_FFN_SIZE,				/* length does not match the shape */
	BP_FFN_NONFINITE,			/* NaN or infinity in the parameters */
	BP_FFN_ALIGN				/* buffer not 4-byte aligned (a caller bug) */
} bp_ffn_problem;

#define BP_FFN_F_INT8 1
#define BP_FFN_F_PREDICTOR 2
#define BP_FFN_F_THRESHOLDS 4
#define BP_FFN_F_OFFSETS 8

/* how bp_ffn_sparse picks neurons: the low-rank predictor, or the exact pre-activations (the
 * first matmul in full, only the second one sparse) */
#define BP_FFN_SELECT_PREDICTOR 0
#define BP_FFN_SELECT_EXACT 1

typedef struct bp_ffn
{
	uint32_t	d;				/* input and output dims */
	uint32_t	h;				/* neurons */
	uint32_t	r;				/* predictor rank, 0 without predictor */
	int			activation;
	const float *w1t;			/* h x d float32, or NULL (int8) */
	const float *w2;			/* h x d float32, or NULL (int8) */
	const int8_t *w1q;			/* h x d int8, or NULL */
	const int8_t *w2q;
	const float *s1;			/* per-row scales of w1q, w2q */
	const float *s2;
	const float *b1;			/* h */
	const float *b2;			/* d */
	const float *p;				/* r x d, or NULL */
	const float *q;				/* r x h */
	const float *thr;			/* h, or NULL */
	const float *c;				/* h off values, or NULL: a skipped neuron counts as c[j] */
	const float *b2c;			/* d: b2 + c @ W2, the output of a layer whose neurons are all off */
} bp_ffn;

/* Checks a stored layer and points f into buf (no copy; 4-byte aligned). */
bp_status	bp_ffn_parse(const void *buf, size_t len, bp_ffn *f, int *problem);

/* The activation of one value, in float (erff, tanhf, expf of the C library). */
float		bp_activation(int activation, float z);

/* Floats of scratch space for bp_ffn_dense / bp_ffn_sparse. */
size_t		bp_ffn_scratch_floats(const bp_ffn *f);

/* y (d floats) for one input x (dim floats). BP_ERR_OVERFLOW (*bad_index: output element)
 * when a result overflows; bp_ffn_sparse likewise. */
bp_status	bp_ffn_dense(const bp_ffn *f, const float *x, size_t dim, float *y, float *scratch,
						 size_t *bad_index);

/* The same computing only the active neurons: the k_active with the largest score (ties to
 * the lower neuron), or with k_active = 0 (predictor only) those whose predicted score exceeds
 * their stored threshold. The score is |act(z) - c| (c = 0 without off values) of the
 * predicted z (BP_FFN_SELECT_PREDICTOR) or of the exact one (BP_FFN_SELECT_EXACT). With off
 * values y = b2c + sum over active j of (act(z_j) - c_j) W2[j]. *n_active tells how many were
 * computed. Without off values and with every neuron active the result is bit-identical to
 * bp_ffn_dense. */
bp_status	bp_ffn_sparse(const bp_ffn *f, const float *x, size_t dim, int64_t k_active, int selector,
						  float *y, float *scratch, size_t *n_active, size_t *bad_index);

/* ---- IVF + RaBitQ: the approximate index's arithmetic (bp_ivf.c) ----
 * Metrics, as the index's distances: L2 squared (<->), minus the inner product (<#>), and
 * 1 - cosine (<=>, vectors normalized before anything else). */
#define BP_METRIC_L2 0
#define BP_METRIC_IP 1
#define BP_METRIC_COSINE 2
#define BP_IVF_ROUNDS 4			/* rotation rounds */
#define BP_IVF_MAX_BITS 4		/* bits per dimension of a code */
#define BP_IVF_SCALE_GRID 24	/* scales tried for a multi-bit code */

/* Per-vector floats beside its code (r the rotated residual, c the rotated centroid, x the
 * code's levels less their middle): |r|, the estimate's scale, its error coefficient, <r, c>
 * (for the inner product) and scale * <x, c>. */
typedef struct bp_ivf_factors
{
	float		norm;
	float		scale;
	float		err;
	float		ipc;
	float		off;
} bp_ivf_factors;

/* A rotated query made a lookup table once (bp_ivf_query_prep), then set per list (_list). */
typedef struct bp_ivf_query
{
	size_t		dim;
	size_t		bytes;			/* of one code bit plane: (dim + 7) / 8 */
	int			bits;			/* of the codes it meets */
	const int16_t *lut;			/* bytes x 256 partial sums of levels */
	float		unit;			/* the value of one level */
	double		sum;			/* sum of the query's elements */
	double		qq;				/* |qr|^2 */
	double		norm;			/* |qr - cr| of the list */
	double		norm2;
	double		ipc;			/* <qr, cr> */
} bp_ivf_query;

/* Progress of long work: return nonzero to stop early (the work is then partial). */
typedef int (*bp_progress_fn) (void *arg, int done, int total);

/* The next of a seeded sequence of 64-bit pseudo-random numbers (splitmix64). */
uint64_t	bp_ivf_random(uint64_t *state);

/* The float kernels of the index: 8 lanes in a fixed order, so every path gives the same bits. */
float		bp_dot(const float *a, const float *b, size_t n);
float		bp_l2sq(const float *a, const float *b, size_t n);
float		bp_dot_with(int avx2, const float *a, const float *b, size_t n);

/* x /= |x| (a zero vector stays zero). */
void		bp_ivf_normalize(float *x, size_t dim);

/* The centroid nearest x (spherical: the largest inner product), its key (L2 squared, or minus
 * the inner product) in *key if not NULL; ties to the lower index. */
size_t		bp_ivf_nearest(const float *x, const float *centroids, size_t k, size_t dim,
						   int spherical, float *key);

/* Lloyd's k-means over n >= k rows (k rows drawn by seed start it; an emptied list takes the row
 * farthest from its centroid); at most iters rounds, fewer once at most 0.1% of the rows move. Deterministic for
 * a seed. scratch holds bp_kmeans_scratch_bytes(n, k, dim) bytes (8-byte aligned). */
size_t		bp_kmeans_scratch_bytes(size_t n, size_t k, size_t dim);
bp_status	bp_kmeans(const float *x, size_t n, size_t dim, size_t k, int iters, uint64_t seed,
					  int spherical, float *centroids, void *scratch, bp_progress_fn progress,
					  void *arg);

/* out = P x for the orthogonal P of a seed (out may be x): norms and inner products kept. */
void		bp_ivf_rotate(const float *x, size_t dim, uint64_t seed, float *out);

/* Bytes of a code: bits planes of (dim + 63) / 64 little-endian 64-bit words. */
size_t		bp_ivf_code_bytes(size_t dim, int bits);

/* The code and factors of a rotated vector xr in the list of rotated centroid cr. scratch holds
 * bp_ivf_code_bytes(dim, bits) / 4 + dim floats (8-byte aligned). */
bp_status	bp_ivf_encode(const float *xr, const float *cr, size_t dim, int bits, float *scratch,
						  uint8_t *code, bp_ivf_factors *f);

/* Entries (int16) of a query's table; makes it from the rotated query qr (for codes of bits
 * bits); then, per list, sets it from <qr, cr> and |cr|^2 of that list. */
size_t		bp_ivf_query_entries(size_t dim);
void		bp_ivf_query_prep(const float *qr, size_t dim, int bits, bp_ivf_query *q, int16_t *lut);
void		bp_ivf_query_list(bp_ivf_query *q, double qc, double cc);

/* The estimated distance (the metric's) of a code to the query, and in *bound the half-width
 * of its error bound before the epsilon factor: est - epsilon * bound is the lower bound. */
double		bp_ivf_estimate(const bp_ivf_query *q, const bp_ivf_factors *f, const uint8_t *code,
							int metric, double *bound);

/* est - epsilon * bound of n items, each holding its factors at factors_at and its code at
 * code_at (an index page's items); a bound that is not a number (damaged factors) is -inf,
 * so that the row is reranked first. */
void		bp_ivf_lower_bounds(const bp_ivf_query *q, const uint8_t *const *items, size_t n,
								size_t factors_at, size_t code_at, int metric, double epsilon,
								double *lb);

/* The exact distance in the metric's form (for COSINE, b normalized; NaN for a zero a). */
double		bp_ivf_distance(int metric, const float *a, const float *b, size_t dim);

/* ---- any codebook's asymmetric score: prepare the query once, then scan codes ----
 * Levels codebooks score q . x_hat by a float table per code byte (as above); RaBitQ ones by
 * the index's estimate. work holds bp_codebook_score_bytes(cb) bytes, 8-byte aligned, and must
 * outlive sq. Higher scores are closer. scan gives BP_ERR_CODE_FACTORS with *bad_row at a
 * RaBitQ code whose factors are not finite (not a code of this codebook). */
typedef struct bp_score_query
{
	const bp_codebook *cb;
	size_t		nbytes;			/* of a code */
	const float *lut;			/* levels: bp_code_bytes(bits) x 256 */
	double		constant;
	size_t		planes;			/* RaBitQ: bytes of the bit planes before the factors */
	bp_ivf_query iq;			/* RaBitQ: the rotated query */
} bp_score_query;

size_t		bp_codebook_score_bytes(const bp_codebook *cb);
bp_status	bp_codebook_score_prep(const bp_codebook *cb, const float *q, size_t dim, void *work,
								   bp_score_query *sq, size_t *bad_index);
bp_status	bp_codebook_score_scan(const bp_score_query *sq, const uint8_t *codes, size_t n,
								   size_t stride, double *out, size_t *bad_row);

#endif							/* BP_CORE_H */

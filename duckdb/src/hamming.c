/*
 * hamming(a, b) -> INTEGER: the number of differing bits of two codes, with the answers and
 * errors of the Python UDFs (plugin/bitpress/duckdb.py) and of PostgreSQL:
 *   BLOB, BLOB  whole bytes (8 bits a byte); two byte lengths: "different bit lengths"
 *   BIT, BIT    two bit lengths: "different bit lengths"; DuckDB's padding bits are ignored
 *   BIT, BLOB   the BLOB is read as a code of the BIT's length, with code_from_bytes' checks
 * NULL in, NULL out. Registered as bitpress_hamming, and as an overload of DuckDB's own
 * hamming(VARCHAR, VARCHAR) where DuckDB accepts one (1.5 and later; older versions refuse it,
 * which is not an error here: bitpress_hamming stays).
 */
#include "bitpress_duckdb.h"

/* Differing bits of two BITs of one bit length: the data bytes' popcount less what the padding
 * bits (the first pad bits of the first data byte, 1 in DuckDB's BITs) add if they differ. */
static inline uint64_t
bits_distance(const uint8_t *a, const uint8_t *b, uint32_t len)
{
	uint8_t		x,
				y;

	if (len < 2)
		return 0;
	x = (uint8_t) (a[1] & ~(0xFFu >> a[0]));
	y = (uint8_t) (b[1] & ~(0xFFu >> a[0]));
	if (x == y)
		return bp_hamming(a + 1, b + 1, len - 1);
	return bp_hamming(a + 1, b + 1, len - 1) - bp_hamming(&x, &y, 1);
}

typedef enum
{
	K_BLOB_BLOB,
	K_BIT_BIT,
	K_BIT_BLOB,
	K_BLOB_BIT
} kinds;

/* hamming of a BIT and a BLOB code; false (error set) on a bad code. */
static bool
mixed(duckdb_function_info info, const uint8_t *bit, uint32_t blen, const uint8_t *blob, uint32_t clen,
	  int32_t *res)
{
	long long	bits = bpd_bit_length(bit, blen);
	bp_status	st;
	uint8_t		stack[512];
	uint8_t    *buf = stack;

	st = bp_check_code_bytes(blob, clen, bits);
	if (st != BP_OK)
	{
		bpd_error(info, st, st == BP_ERR_CODE_BYTES ? (long long) clen : bits, bits);
		return false;
	}
	if (clen == 0)
	{
		*res = 0;
		return true;
	}
	if (clen > sizeof(stack))
	{
		buf = duckdb_malloc(clen);
		if (buf == NULL)
		{
			duckdb_scalar_function_set_error(info, "out of memory");
			return false;
		}
	}
	bpd_bit_to_code(bit, blen, buf);
	*res = (int32_t) bp_hamming(buf, blob, clen);
	if (buf != stack)
		duckdb_free(buf);
	return true;
}

static void
hamming_kind(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output, kinds kind)
{
	idx_t		n = duckdb_data_chunk_get_size(input);
	duckdb_vector va = duckdb_data_chunk_get_vector(input, 0);
	duckdb_vector vb = duckdb_data_chunk_get_vector(input, 1);
	const duckdb_string_t *a = duckdb_vector_get_data(va);
	const duckdb_string_t *b = duckdb_vector_get_data(vb);
	const uint64_t *ma = duckdb_vector_get_validity(va);
	const uint64_t *mb = duckdb_vector_get_validity(vb);
	int32_t    *res = duckdb_vector_get_data(output);

	for (idx_t i = 0; i < n; i++)
	{
		uint32_t	la,
					lb;
		const uint8_t *pa,
				   *pb;

		if (!bpd_valid(ma, i) || !bpd_valid(mb, i))
		{
			bpd_set_null(output, i);
			continue;
		}
		pa = bpd_bytes(&a[i], &la);
		pb = bpd_bytes(&b[i], &lb);
		switch (kind)
		{
			case K_BLOB_BLOB:
				if (la != lb)
				{
					bpd_error(info, BP_ERR_BIT_LENGTH_MISMATCH, 8 * (long long) la, 8 * (long long) lb);
					return;
				}
				res[i] = (int32_t) bp_hamming(pa, pb, la);
				break;
			case K_BIT_BIT:
				{
					long long	ba = bpd_bit_length(pa, la),
								bb = bpd_bit_length(pb, lb);

					if (ba != bb)
					{
						bpd_error(info, BP_ERR_BIT_LENGTH_MISMATCH, ba, bb);
						return;
					}
					res[i] = (int32_t) bits_distance(pa, pb, la);
				}
				break;
			case K_BIT_BLOB:
				if (!mixed(info, pa, la, pb, lb, &res[i]))
					return;
				break;
			case K_BLOB_BIT:
				if (!mixed(info, pb, lb, pa, la, &res[i]))
					return;
				break;
		}
	}
}

static void
hamming_blob_blob(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	hamming_kind(info, input, output, K_BLOB_BLOB);
}

static void
hamming_bit_bit(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	hamming_kind(info, input, output, K_BIT_BIT);
}

static void
hamming_bit_blob(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	hamming_kind(info, input, output, K_BIT_BLOB);
}

static void
hamming_blob_bit(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	hamming_kind(info, input, output, K_BLOB_BIT);
}

static bool
register_as(duckdb_connection con, const char *name)
{
	static const struct
	{
		duckdb_type a,
					b;
		duckdb_scalar_function_t fn;
	}			overloads[] = {
		{DUCKDB_TYPE_BLOB, DUCKDB_TYPE_BLOB, hamming_blob_blob},
		{DUCKDB_TYPE_BIT, DUCKDB_TYPE_BIT, hamming_bit_bit},
		{DUCKDB_TYPE_BIT, DUCKDB_TYPE_BLOB, hamming_bit_blob},
		{DUCKDB_TYPE_BLOB, DUCKDB_TYPE_BIT, hamming_blob_bit},
	};
	duckdb_scalar_function_set set = duckdb_create_scalar_function_set(name);
	bool		ok = true;

	for (size_t i = 0; ok && i < sizeof(overloads) / sizeof(overloads[0]); i++)
	{
		duckdb_logical_type args[2] = {duckdb_create_logical_type(overloads[i].a),
		duckdb_create_logical_type(overloads[i].b)};

		ok = bpd_add_overload(set, name, overloads[i].fn, args, 2,
							  duckdb_create_logical_type(DUCKDB_TYPE_INTEGER));
	}
	ok = ok && duckdb_register_scalar_function_set(con, set) == DuckDBSuccess;
	duckdb_destroy_scalar_function_set(&set);
	return ok;
}

bool
bpd_register_hamming(duckdb_connection con)
{
	if (!register_as(con, "bitpress_hamming"))
		return false;
	(void) register_as(con, "hamming");	/* DuckDB < 1.5 refuses an overload of its own */
	return true;
}

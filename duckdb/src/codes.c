/*
 * The two layouts of a code, and the SQL functions between them, as the Python UDFs and
 * PostgreSQL have them:
 *   code_bytes(BIT) -> BLOB        PostgreSQL's layout of a BIT code (code_bytes(BLOB): itself)
 *   code_from_bytes(BLOB, n) -> BIT  a BIT of n bits from a code's bytes, with PostgreSQL's
 *                                  checks: (n + 7) / 8 bytes, zero padding bits, n >= 0; and
 *                                  n >= 1 (DuckDB has no empty BIT). code_from_bytes(BIT, n)
 *                                  reads the BIT's bytes through code_bytes.
 * NULL in, NULL out.
 */
#include <string.h>

#include "bitpress_duckdb.h"

long long
bpd_bit_length(const uint8_t *bit, uint32_t len)
{
	return len == 0 ? 0 : 8 * (long long) (len - 1) - bit[0];
}

void
bpd_bit_to_code(const uint8_t *bit, uint32_t len, uint8_t *code)
{
	unsigned	pad = len ? bit[0] : 0;
	uint32_t	n = len ? len - 1 : 0;

	if (pad == 0)
	{
		memcpy(code, bit + 1, n);
		return;
	}
	for (uint32_t j = 0; j < n; j++)
	{
		unsigned	next = j + 1 < n ? bit[j + 2] : 0;

		code[j] = (uint8_t) ((bit[j + 1] << pad) | (next >> (8 - pad)));
	}
}

uint32_t
bpd_code_to_bit(const uint8_t *code, size_t bits, uint8_t *bit)
{
	size_t		n = bp_code_bytes(bits);
	unsigned	pad = (unsigned) (8 * n - bits);

	bit[0] = (uint8_t) pad;
	for (size_t j = 0; j < n; j++)
	{
		unsigned	prev = j == 0 ? 0xFFu : code[j - 1];

		bit[j + 1] = pad == 0 ? code[j] : (uint8_t) ((prev << (8 - pad)) | (code[j] >> pad));
	}
	return (uint32_t) n + 1;
}

/* A buffer of n bytes: stack when it fits, else duckdb_malloc (NULL: out of memory). */
static uint8_t *
scratch(uint8_t *stack, size_t stack_size, size_t n)
{
	return n <= stack_size ? stack : duckdb_malloc(n);
}

static void
code_bytes_bit(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	idx_t		rows = duckdb_data_chunk_get_size(input);
	duckdb_vector vb = duckdb_data_chunk_get_vector(input, 0);
	const duckdb_string_t *b = duckdb_vector_get_data(vb);
	const uint64_t *mb = duckdb_vector_get_validity(vb);
	uint8_t		stack[1024];

	for (idx_t i = 0; i < rows; i++)
	{
		uint32_t	len;
		const uint8_t *p;
		uint8_t    *buf;

		if (!bpd_valid(mb, i))
		{
			bpd_set_null(output, i);
			continue;
		}
		p = bpd_bytes(&b[i], &len);
		buf = scratch(stack, sizeof(stack), len);
		if (buf == NULL)
		{
			duckdb_scalar_function_set_error(info, "out of memory");
			return;
		}
		bpd_bit_to_code(p, len, buf);
		duckdb_vector_assign_string_element_len(output, i, (const char *) buf, len ? len - 1 : 0);
		if (buf != stack)
			duckdb_free(buf);
	}
}

static void
code_bytes_blob(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	idx_t		rows = duckdb_data_chunk_get_size(input);
	duckdb_vector vb = duckdb_data_chunk_get_vector(input, 0);
	const duckdb_string_t *b = duckdb_vector_get_data(vb);
	const uint64_t *mb = duckdb_vector_get_validity(vb);

	(void) info;				/* cannot fail */

	for (idx_t i = 0; i < rows; i++)
	{
		uint32_t	len;
		const uint8_t *p;

		if (!bpd_valid(mb, i))
		{
			bpd_set_null(output, i);
			continue;
		}
		p = bpd_bytes(&b[i], &len);
		duckdb_vector_assign_string_element_len(output, i, (const char *) p, len);
	}
}

static void
code_from_bytes_rows(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output, bool from_bit)
{
	idx_t		rows = duckdb_data_chunk_get_size(input);
	duckdb_vector vb = duckdb_data_chunk_get_vector(input, 0);
	duckdb_vector vn = duckdb_data_chunk_get_vector(input, 1);
	const duckdb_string_t *b = duckdb_vector_get_data(vb);
	const int64_t *nbits = duckdb_vector_get_data(vn);
	const uint64_t *mb = duckdb_vector_get_validity(vb);
	const uint64_t *mn = duckdb_vector_get_validity(vn);
	uint8_t		stack[1024],
				stack2[1025];

	for (idx_t i = 0; i < rows; i++)
	{
		uint32_t	len;
		const uint8_t *p;
		uint8_t    *code = NULL,
				   *bit;
		long long	n = nbits[i];
		bp_status	st;

		if (!bpd_valid(mb, i) || !bpd_valid(mn, i))
		{
			bpd_set_null(output, i);
			continue;
		}
		p = bpd_bytes(&b[i], &len);
		if (from_bit)
		{
			code = scratch(stack, sizeof(stack), len);
			if (code == NULL)
			{
				duckdb_scalar_function_set_error(info, "out of memory");
				return;
			}
			bpd_bit_to_code(p, len, code);
			p = code;
			len = len ? len - 1 : 0;
		}
		st = bp_check_code_bytes(p, len, n);
		if (st != BP_OK || n == 0)
		{
			if (st != BP_OK)
				bpd_error(info, st, st == BP_ERR_CODE_BYTES ? (long long) len : n, n);
			else
				duckdb_scalar_function_set_error(info, "a DuckDB BIT holds at least 1 bit, got a code of 0 bits");
			if (code && code != stack)
				duckdb_free(code);
			return;
		}
		bit = scratch(stack2, sizeof(stack2), (size_t) len + 1);
		if (bit == NULL)
		{
			duckdb_scalar_function_set_error(info, "out of memory");
			return;
		}
		duckdb_vector_assign_string_element_len(output, i, (const char *) bit, bpd_code_to_bit(p, (size_t) n, bit));
		if (bit != stack2)
			duckdb_free(bit);
		if (code && code != stack)
			duckdb_free(code);
	}
}

static void
code_from_bytes_blob(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	code_from_bytes_rows(info, input, output, false);
}

static void
code_from_bytes_bit(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	code_from_bytes_rows(info, input, output, true);
}

static bool
add(duckdb_scalar_function_set set, const char *name, duckdb_scalar_function_t fn, duckdb_type a, int nargs,
	duckdb_type ret)
{
	duckdb_logical_type args[2] = {duckdb_create_logical_type(a), duckdb_create_logical_type(DUCKDB_TYPE_BIGINT)};

	if (nargs == 1)
		duckdb_destroy_logical_type(&args[1]);
	return bpd_add_overload(set, name, fn, args, (idx_t) nargs, duckdb_create_logical_type(ret));
}

static bool
register_set(duckdb_connection con, const char *name, bool from_bytes)
{
	duckdb_scalar_function_set set = duckdb_create_scalar_function_set(name);
	bool		ok;

	if (from_bytes)
		ok = add(set, name, code_from_bytes_blob, DUCKDB_TYPE_BLOB, 2, DUCKDB_TYPE_BIT) &&
			add(set, name, code_from_bytes_bit, DUCKDB_TYPE_BIT, 2, DUCKDB_TYPE_BIT);
	else
		ok = add(set, name, code_bytes_bit, DUCKDB_TYPE_BIT, 1, DUCKDB_TYPE_BLOB) &&
			add(set, name, code_bytes_blob, DUCKDB_TYPE_BLOB, 1, DUCKDB_TYPE_BLOB);
	ok = ok && duckdb_register_scalar_function_set(con, set) == DuckDBSuccess;
	duckdb_destroy_scalar_function_set(&set);
	return ok;
}

bool
bpd_register_codes(duckdb_connection con)
{
	return register_set(con, "code_bytes", false) && register_set(con, "code_from_bytes", true);
}

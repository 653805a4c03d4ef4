/*
 * bitpress_simd() -> VARCHAR: the Hamming kernel path the core picked for this CPU at LOAD
 * (scalar, popcnt, avx2, avx512), as bitpress.simd() in Python. bitpress_version() -> VARCHAR:
 * the core's version (BP_VERSION), the one of the PostgreSQL extension and the Python package.
 */
#include <string.h>

#include "bitpress_duckdb.h"

static void
constant_string(duckdb_data_chunk input, duckdb_vector output, const char *s)
{
	idx_t		n = duckdb_data_chunk_get_size(input);

	for (idx_t i = 0; i < n; i++)
		duckdb_vector_assign_string_element_len(output, i, s, strlen(s));
}

static void
simd_name(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	const char *name = bp_impl_name(bp_get_impl());

	(void) info;

	constant_string(input, output, name ? name : "unknown");
}

static void
version_name(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	(void) info;
	constant_string(input, output, BP_VERSION);
}

static bool
register_one(duckdb_connection con, const char *name, duckdb_scalar_function_t fn)
{
	duckdb_scalar_function_set set = duckdb_create_scalar_function_set(name);
	bool		ok = bpd_add_overload(set, name, fn, NULL, 0, duckdb_create_logical_type(DUCKDB_TYPE_VARCHAR));

	ok = ok && duckdb_register_scalar_function_set(con, set) == DuckDBSuccess;
	duckdb_destroy_scalar_function_set(&set);
	return ok;
}

bool
bpd_register_simd(duckdb_connection con)
{
	return register_one(con, "bitpress_simd", simd_name) && register_one(con, "bitpress_version", version_name);
}

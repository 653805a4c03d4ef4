/*
 * bitpress_simd() -> VARCHAR: the Hamming kernel path the core picked for this CPU at LOAD
 * (scalar, popcnt, avx2, avx512), as bitpress.simd() in Python.
 * bitpress_set_simd(name VARCHAR) -> VARCHAR: forces a path ('auto': the fastest supported) for
 * the whole process (this copy of the core: the Python module's is another), returns the one
 * now in use; a path this CPU lacks is an error. Volatile, for tests and benchmarks.
 * bitpress_version() -> VARCHAR: the core's version (BP_VERSION), the one of the PostgreSQL
 * extension and the Python package.
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
set_simd(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	idx_t		n = duckdb_data_chunk_get_size(input);
	duckdb_vector vn = duckdb_data_chunk_get_vector(input, 0);
	const duckdb_string_t *names = duckdb_vector_get_data(vn);
	const uint64_t *mn = duckdb_vector_get_validity(vn);

	for (idx_t i = 0; i < n; i++)
	{
		char		name[32];
		uint32_t	len;
		const uint8_t *p;
		int			impl;
		const char *now;

		if (!bpd_valid(mn, i))
		{
			bpd_set_null(output, i);
			continue;
		}
		p = bpd_bytes(&names[i], &len);
		impl = -2;
		if (len < sizeof(name))
		{
			memcpy(name, p, len);
			name[len] = '\0';
			impl = bp_impl_from_name(name);
		}
		if (impl == -2 || bp_set_impl((bp_impl) impl) != BP_OK)
		{
			bpd_error(info, BP_ERR_UNKNOWN_IMPL, 0, 0);
			return;
		}
		now = bp_impl_name(bp_get_impl());
		duckdb_vector_assign_string_element_len(output, i, now, strlen(now));
	}
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

static bool
register_set_simd(duckdb_connection con)
{
	duckdb_scalar_function f = duckdb_create_scalar_function();
	duckdb_logical_type v = duckdb_create_logical_type(DUCKDB_TYPE_VARCHAR);
	bool		ok;

	duckdb_scalar_function_set_name(f, "bitpress_set_simd");
	duckdb_scalar_function_add_parameter(f, v);
	duckdb_scalar_function_set_return_type(f, v);
	duckdb_scalar_function_set_function(f, set_simd);
	duckdb_scalar_function_set_volatile(f);
	ok = duckdb_register_scalar_function(con, f) == DuckDBSuccess;
	duckdb_destroy_scalar_function(&f);
	duckdb_destroy_logical_type(&v);
	return ok;
}

bool
bpd_register_simd(duckdb_connection con)
{
	return register_one(con, "bitpress_simd", simd_name) && register_one(con, "bitpress_version", version_name) &&
		register_set_simd(con);
}

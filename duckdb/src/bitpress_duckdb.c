/*
 * Entry point of bitpress.duckdb_extension: DuckDB calls bitpress_init_c_api (the file's base
 * name + _init_c_api) on LOAD. It picks the core's SIMD path for this CPU once (bp_init: the
 * same runtime dispatch as the PostgreSQL extension and the Python module; no -march=native)
 * and registers each concept's functions.
 */
#include <stdio.h>

#include "bitpress_duckdb.h"

DUCKDB_EXTENSION_ENTRYPOINT(duckdb_connection connection, duckdb_extension_info info,
							struct duckdb_extension_access *access)
{
	bp_init();
	if (!bpd_register_hamming(connection) || !bpd_register_binarize(connection) ||
		!bpd_register_codes(connection) || !bpd_register_simd(connection))
	{
		access->set_error(info, "bitpress: DuckDB refused to register a function");
		return false;
	}
	return true;
}

void
bpd_error(duckdb_function_info info, bp_status status, long long a, long long b)
{
	char		msg[256];

	bp_error_message(msg, sizeof(msg), status, a, b);
	duckdb_scalar_function_set_error(info, msg);
}

void
bpd_set_null(duckdb_vector out, idx_t row)
{
	duckdb_vector_ensure_validity_writable(out);
	duckdb_validity_set_row_invalid(duckdb_vector_get_validity(out), row);
}

bool
bpd_add_overload(duckdb_scalar_function_set set, const char *name, duckdb_scalar_function_t fn,
				 duckdb_logical_type *args, idx_t nargs, duckdb_logical_type ret)
{
	duckdb_scalar_function f = duckdb_create_scalar_function();
	bool		ok;

	duckdb_scalar_function_set_name(f, name);
	for (idx_t i = 0; i < nargs; i++)
	{
		duckdb_scalar_function_add_parameter(f, args[i]);
		duckdb_destroy_logical_type(&args[i]);
	}
	duckdb_scalar_function_set_return_type(f, ret);
	duckdb_destroy_logical_type(&ret);
	duckdb_scalar_function_set_function(f, fn);
	ok = duckdb_add_scalar_function_to_set(set, f) == DuckDBSuccess;
	duckdb_destroy_scalar_function(&f);
	return ok;
}

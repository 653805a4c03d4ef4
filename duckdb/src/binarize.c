/*
 * binarize(v FLOAT[]) -> BIT: sign codes, bit i = 1 when v[i] > 0 (pgvector's binary_quantize);
 * binarize(v FLOAT[], thresholds FLOAT[]) -> BIT: bit i = 1 when v[i] > thresholds[i].
 * DOUBLE[] overloads round each element to FLOAT first, as the UDFs' CAST(v AS FLOAT[]) does (a
 * finite value beyond FLOAT's range is an error, as there).
 * The answers and errors of the Python UDFs (and of PostgreSQL's binarize): a BIT of len(v)
 * bits; an empty or too long vector, NaN or infinity, a NULL element, or thresholds of another
 * length are errors. NULL in, NULL out. Also registered as bitpress_binarize.
 * The core writes PostgreSQL's layout; bpd_code_to_bit makes it a DuckDB BIT.
 */
#include <math.h>
#include <stdio.h>

#include "bitpress_duckdb.h"

/* The floats of list row i (DOUBLE elements rounded into buf); false (error set) when an
 * element is NULL or a DOUBLE does not fit a FLOAT. */
static bool
list_row(duckdb_function_info info, duckdb_vector list, idx_t i, bool doubles, float *buf,
		 const float **x, size_t *dim, const char *what)
{
	const duckdb_list_entry *e = (const duckdb_list_entry *) duckdb_vector_get_data(list) + i;
	duckdb_vector child = duckdb_list_vector_get_child(list);
	const uint64_t *mc = duckdb_vector_get_validity(child);
	char		msg[160];

	if (mc != NULL)
		for (idx_t k = e->offset; k < e->offset + e->length; k++)
			if (!bpd_valid(mc, k))
			{
				snprintf(msg, sizeof(msg), "%s must not contain nulls", what);
				duckdb_scalar_function_set_error(info, msg);
				return false;
			}
	*dim = (size_t) e->length;
	if (!doubles)
	{
		*x = (const float *) duckdb_vector_get_data(child) + e->offset;
		return true;
	}
	if (*dim > BP_MAX_DIM)
	{
		*x = NULL;				/* bp_binarize reports it before reading */
		return true;
	}
	{
		const double *d = (const double *) duckdb_vector_get_data(child) + e->offset;

		for (size_t k = 0; k < *dim; k++)
		{
			buf[k] = (float) d[k];
			if (isinf(buf[k]) && isfinite(d[k]))
			{
				snprintf(msg, sizeof(msg), "%s: value %g is out of range for FLOAT (element %zu)",
						 what, d[k], k + 1);
				duckdb_scalar_function_set_error(info, msg);
				return false;
			}
		}
	}
	*x = buf;
	return true;
}

static void
binarize_rows(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output, bool thresholds,
			  bool doubles)
{
	idx_t		n = duckdb_data_chunk_get_size(input);
	duckdb_vector vx = duckdb_data_chunk_get_vector(input, 0);
	duckdb_vector vt = thresholds ? duckdb_data_chunk_get_vector(input, 1) : NULL;
	const uint64_t *mx = duckdb_vector_get_validity(vx);
	const uint64_t *mt = thresholds ? duckdb_vector_get_validity(vt) : NULL;
	static _Thread_local uint8_t code[BP_MAX_DIM / 8];
	static _Thread_local uint8_t bit[BP_MAX_DIM / 8 + 1];
	static _Thread_local float xbuf[BP_MAX_DIM];
	static _Thread_local float tbuf[BP_MAX_DIM];

	for (idx_t i = 0; i < n; i++)
	{
		const float *x,
				   *t = NULL;
		size_t		dim,
					tdim,
					bad = 0;
		bp_status	st;

		if (!bpd_valid(mx, i) || !bpd_valid(mt, i))
		{
			bpd_set_null(output, i);
			continue;
		}
		if (!list_row(info, vx, i, doubles, xbuf, &x, &dim, "vector"))
			return;
		if (thresholds)
		{
			if (!list_row(info, vt, i, doubles, tbuf, &t, &tdim, "thresholds"))
				return;
			if (tdim != dim)
			{
				bpd_error(info, BP_ERR_DIM_MISMATCH, (long long) dim, (long long) tdim);
				return;
			}
		}
		if (thresholds && x == NULL)
			t = NULL;			/* too long: reported as such below */
		st = bp_binarize(x, t, dim, code, &bad);
		if (st != BP_OK)
		{
			bpd_error(info, st, st == BP_ERR_TOO_LARGE ? (long long) dim : (long long) bad, 0);
			return;
		}
		duckdb_vector_assign_string_element_len(output, i, (const char *) bit, bpd_code_to_bit(code, dim, bit));
	}
}

static void
binarize_sign(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	binarize_rows(info, input, output, false, false);
}

static void
binarize_thresholds(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	binarize_rows(info, input, output, true, false);
}

static void
binarize_sign_double(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	binarize_rows(info, input, output, false, true);
}

static void
binarize_thresholds_double(duckdb_function_info info, duckdb_data_chunk input, duckdb_vector output)
{
	binarize_rows(info, input, output, true, true);
}

static bool
register_as(duckdb_connection con, const char *name)
{
	static const struct
	{
		duckdb_type elem;
		int			nargs;
		duckdb_scalar_function_t fn;
	}			overloads[] = {
		{DUCKDB_TYPE_FLOAT, 1, binarize_sign},
		{DUCKDB_TYPE_FLOAT, 2, binarize_thresholds},
		{DUCKDB_TYPE_DOUBLE, 1, binarize_sign_double},
		{DUCKDB_TYPE_DOUBLE, 2, binarize_thresholds_double},
	};
	duckdb_scalar_function_set set = duckdb_create_scalar_function_set(name);
	bool		ok = true;

	for (size_t i = 0; ok && i < sizeof(overloads) / sizeof(overloads[0]); i++)
	{
		duckdb_logical_type elem = duckdb_create_logical_type(overloads[i].elem);
		duckdb_logical_type args[2] = {duckdb_create_list_type(elem), duckdb_create_list_type(elem)};

		duckdb_destroy_logical_type(&elem);
		if (overloads[i].nargs == 1)
			duckdb_destroy_logical_type(&args[1]);
		ok = bpd_add_overload(set, name, overloads[i].fn, args, (idx_t) overloads[i].nargs,
							  duckdb_create_logical_type(DUCKDB_TYPE_BIT));
	}
	ok = ok && duckdb_register_scalar_function_set(con, set) == DuckDBSuccess;
	duckdb_destroy_scalar_function_set(&set);
	return ok;
}

bool
bpd_register_binarize(duckdb_connection con)
{
	return register_as(con, "binarize") && register_as(con, "bitpress_binarize");
}

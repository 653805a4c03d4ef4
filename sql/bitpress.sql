-- bitpress 0.1.0: binary codes for vectors and Hamming distances, from the shared C core.
\echo Use "CREATE EXTENSION bitpress" to load this file. \quit

-- binarize ---------------------------------------------------------------------------------

CREATE FUNCTION binarize(vector) RETURNS varbit
	AS 'MODULE_PATHNAME', 'binarize_vector'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION binarize(vector, real[]) RETURNS varbit
	AS 'MODULE_PATHNAME', 'binarize_vector_thresholds'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION binarize(real[]) RETURNS varbit
	AS 'MODULE_PATHNAME', 'binarize_float4'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION binarize(real[], real[]) RETURNS varbit
	AS 'MODULE_PATHNAME', 'binarize_float4_thresholds'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION binarize(vector) IS
	'one bit per dimension, 1 where the value is > 0, packed like bit(n); equals pgvector binary_quantize()';
COMMENT ON FUNCTION binarize(vector, real[]) IS
	'one bit per dimension, 1 where v[i] > thresholds[i]; the code works with pgvector <~> and bit_hamming_ops';
COMMENT ON FUNCTION binarize(real[]) IS
	'one bit per element of a real[], 1 where the value is > 0';
COMMENT ON FUNCTION binarize(real[], real[]) IS
	'one bit per element of a real[], 1 where v[i] > thresholds[i]';

-- hamming ----------------------------------------------------------------------------------

CREATE FUNCTION hamming(varbit, varbit) RETURNS integer
	AS 'MODULE_PATHNAME', 'hamming_varbit'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION hamming(varbit, varbit) IS
	'number of differing bits between two codes of the same length (SIMD popcount chosen at load time)';

-- codes across engines ---------------------------------------------------------------------

CREATE FUNCTION code_bytes(varbit) RETURNS bytea
	AS 'MODULE_PATHNAME', 'code_bytes'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION code_from_bytes(bytea, integer) RETURNS varbit
	AS 'MODULE_PATHNAME', 'code_from_bytes'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION code_bytes(varbit) IS
	'the packed bytes of a code (MSB first, zero padding), as bitpress stores codes in DuckDB BLOBs';
COMMENT ON FUNCTION code_from_bytes(bytea, integer) IS
	'a code of n bits from its packed bytes (the inverse of code_bytes)';

-- introspection ----------------------------------------------------------------------------

CREATE FUNCTION bitpress_simd() RETURNS text
	AS 'MODULE_PATHNAME', 'bitpress_simd'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION bitpress_simd_supported() RETURNS text[]
	AS 'MODULE_PATHNAME', 'bitpress_simd_supported'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION bitpress_simd() IS
	'the Hamming kernel path this backend uses (set with bitpress.simd)';
COMMENT ON FUNCTION bitpress_simd_supported() IS
	'the Hamming kernel paths this server''s CPU supports';

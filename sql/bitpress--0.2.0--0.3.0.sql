-- bitpress 0.3.0: model weights as Tensor-Train cores (bitpress.tt_tensors, bitpress.tt_cores).
\echo Use "ALTER EXTENSION bitpress UPDATE TO '0.3.0'" to load this file. \quit

-- STABLE, not IMMUTABLE: results depend on table rows, checked once per statement. Indexes
-- are 1-based like SQL arrays; a tensor of more than two dimensions is viewed as
-- (shape[1], product of the rest), a 1-D tensor as one row.

CREATE FUNCTION tt_reconstruct(model text, tensor text) RETURNS real[]
	AS 'MODULE_PATHNAME', 'tt_reconstruct'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION tt_reconstruct_row(model text, tensor text, i integer) RETURNS real[]
	AS 'MODULE_PATHNAME', 'tt_reconstruct_row'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION tt_element(model text, tensor text, i integer, j integer) RETURNS real
	AS 'MODULE_PATHNAME', 'tt_element'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION tt_matvec(model text, tensor text, x vector) RETURNS vector
	AS 'MODULE_PATHNAME', 'tt_matvec_vector'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION tt_matvec(model text, tensor text, x real[]) RETURNS real[]
	AS 'MODULE_PATHNAME', 'tt_matvec_float4'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION tt_vector(model text, tensor text) RETURNS vector
	AS 'SELECT tt_reconstruct(model, tensor)::vector'
	LANGUAGE SQL STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION tt_reconstruct_row_vector(model text, tensor text, i integer) RETURNS vector
	AS 'SELECT tt_reconstruct_row(model, tensor, i)::vector'
	LANGUAGE SQL STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION tt_reconstruct(text, text) IS
	'a stored tensor rebuilt whole from its Tensor-Train cores, in its original shape';
COMMENT ON FUNCTION tt_reconstruct_row(text, text, integer) IS
	'row i (1-based) of a stored tensor, computed from its cores without rebuilding the tensor';
COMMENT ON FUNCTION tt_element(text, text, integer, integer) IS
	'element (i, j) (1-based) of a stored tensor viewed as a matrix, from its cores';
COMMENT ON FUNCTION tt_matvec(text, text, vector) IS
	'x @ W for a stored matrix W (ONNX MatMul order): applies a stored layer to a vector';
COMMENT ON FUNCTION tt_matvec(text, text, real[]) IS
	'x @ W for a stored matrix W, on real[] (for more than 16000 columns)';
COMMENT ON FUNCTION tt_vector(text, text) IS
	'a stored 1-D tensor (a bias, a norm weight) as a pgvector vector';
COMMENT ON FUNCTION tt_reconstruct_row_vector(text, text, integer) IS
	'row i (1-based) of a stored tensor as a pgvector vector';

-- feed-forward layers (bitpress.ffn_layers): dense and sparse ----------------------------------

CREATE FUNCTION ffn(x vector, layer text) RETURNS vector
	AS 'MODULE_PATHNAME', 'ffn_vector'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION ffn(x real[], layer text) RETURNS real[]
	AS 'MODULE_PATHNAME', 'ffn_float4'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION sparse_ffn(x vector, layer text, k integer) RETURNS vector
	AS 'MODULE_PATHNAME', 'sparse_ffn_vector'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION sparse_ffn(x real[], layer text, k integer) RETURNS real[]
	AS 'MODULE_PATHNAME', 'sparse_ffn_float4'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION sparse_ffn(x vector, layer text, k integer, selector text) RETURNS vector
	AS 'MODULE_PATHNAME', 'sparse_ffn_vector'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION sparse_ffn(x real[], layer text, k integer, selector text) RETURNS real[]
	AS 'MODULE_PATHNAME', 'sparse_ffn_float4'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION sparse_ffn(x vector, layer text) RETURNS vector
	AS 'MODULE_PATHNAME', 'sparse_ffn_vector'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION sparse_ffn(x real[], layer text) RETURNS real[]
	AS 'MODULE_PATHNAME', 'sparse_ffn_float4'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION ffn(vector, text) IS
	'a stored feed-forward layer act(x W1 + b1) W2 + b2 on x, every neuron computed';
COMMENT ON FUNCTION ffn(real[], text) IS
	'a stored feed-forward layer on a real[], every neuron computed';
COMMENT ON FUNCTION sparse_ffn(vector, text, integer) IS
	'a stored feed-forward layer computing only the k neurons its low-rank predictor ranks highest';
COMMENT ON FUNCTION sparse_ffn(real[], text, integer) IS
	'sparse_ffn on a real[]: only the k neurons the predictor ranks highest';
COMMENT ON FUNCTION sparse_ffn(vector, text, integer, text) IS
	'sparse_ffn choosing the k neurons by the predictor (selector ''predictor'') or by their exact activations (''exact'': first matmul in full, second sparse)';
COMMENT ON FUNCTION sparse_ffn(real[], text, integer, text) IS
	'sparse_ffn on a real[] with a selector (''predictor'' or ''exact'')';
COMMENT ON FUNCTION sparse_ffn(vector, text) IS
	'a stored feed-forward layer computing only the neurons its predictor puts above their fitted thresholds';
COMMENT ON FUNCTION sparse_ffn(real[], text) IS
	'sparse_ffn on a real[] with the fitted per-neuron thresholds';

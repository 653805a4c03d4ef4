-- bitpress 0.2.0: stored codebooks, asymmetric scores, k-NN with rerank.
\echo Use "ALTER EXTENSION bitpress UPDATE TO '0.2.0'" to load this file. \quit

-- binarize with a codebook from bitpress.codebooks ------------------------------------------
-- STABLE, not IMMUTABLE: the result depends on a table row (checked once per statement).

CREATE FUNCTION binarize(vector, codebook text) RETURNS varbit
	AS 'MODULE_PATHNAME', 'binarize_vector_codebook'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION binarize(vector, codebook text, version integer) RETURNS varbit
	AS 'MODULE_PATHNAME', 'binarize_vector_codebook'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION binarize(real[], codebook text) RETURNS varbit
	AS 'MODULE_PATHNAME', 'binarize_float4_codebook'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION binarize(real[], codebook text, version integer) RETURNS varbit
	AS 'MODULE_PATHNAME', 'binarize_float4_codebook'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION binarize(vector, text) IS
	'code of a vector under the latest version of a codebook stored in bitpress.codebooks';
COMMENT ON FUNCTION binarize(vector, text, integer) IS
	'code of a vector under one version of a codebook stored in bitpress.codebooks';
COMMENT ON FUNCTION binarize(real[], text) IS
	'code of a real[] under the latest version of a stored codebook';
COMMENT ON FUNCTION binarize(real[], text, integer) IS
	'code of a real[] under one version of a stored codebook';

-- asymmetric score: float query against a code -----------------------------------------------

CREATE FUNCTION bitpress_score(code varbit, query vector, codebook text) RETURNS double precision
	AS 'MODULE_PATHNAME', 'score_vector_codebook'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION bitpress_score(code varbit, query vector, codebook text, version integer)
	RETURNS double precision
	AS 'MODULE_PATHNAME', 'score_vector_codebook'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION bitpress_score(varbit, vector, text) IS
	'estimated inner product of a float query with the vector a code stands for (codebook reconstruction levels); higher is closer';
COMMENT ON FUNCTION bitpress_score(varbit, vector, text, integer) IS
	'bitpress_score with one version of the codebook';

-- k-NN: Hamming top k * oversample over the codes, then rerank ----------------------------------

CREATE FUNCTION bitpress_check_knn(k integer, oversample integer) RETURNS bigint
	LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
	IF k IS NULL OR k < 1 THEN
		RAISE EXCEPTION 'k must be at least 1, got %', coalesce(k::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF oversample IS NULL OR oversample < 1 THEN
		RAISE EXCEPTION 'oversample must be at least 1, got %', coalesce(oversample::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN k::bigint * oversample;
END $$;

COMMENT ON FUNCTION bitpress_check_knn(integer, integer) IS
	'internal: checks k and oversample of the k-NN functions, returns the candidate pool size';

CREATE FUNCTION bitpress_check_scoring(scoring text, codebook text) RETURNS boolean
	LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
	IF scoring IS NULL OR scoring NOT IN ('hamming', 'asymmetric') THEN
		RAISE EXCEPTION 'scoring must be hamming or asymmetric, got %', coalesce(scoring, 'NULL')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF scoring = 'asymmetric' AND codebook IS NULL THEN
		RAISE EXCEPTION 'asymmetric scoring needs a codebook with reconstruction levels'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN scoring = 'asymmetric';
END $$;

COMMENT ON FUNCTION bitpress_check_scoring(text, text) IS
	'internal: checks the scoring argument of the k-NN functions; true for asymmetric';

CREATE FUNCTION bitpress_relation(rows anyelement) RETURNS regclass
	LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
	rel regclass;
BEGIN
	SELECT t.typrelid::regclass INTO rel FROM pg_type t
		WHERE t.oid = pg_typeof(rows) AND t.typrelid <> 0;
	IF rel IS NULL THEN
		RAISE EXCEPTION 'the first argument must be a table''s row type, such as NULL::docs, not %',
			pg_typeof(rows) USING ERRCODE = 'datatype_mismatch';
	END IF;
	RETURN rel;
END $$;

COMMENT ON FUNCTION bitpress_relation(anyelement) IS
	'internal: the table whose row type the k-NN functions were given';

CREATE FUNCTION bitpress_knn(rows anyelement, code_column text, vector_column text, query vector,
							 k integer, oversample integer DEFAULT 4, codebook text DEFAULT NULL,
							 metric text DEFAULT 'cosine', scoring text DEFAULT 'hamming')
	RETURNS SETOF anyelement
	LANGUAGE plpgsql STABLE PARALLEL RESTRICTED AS $$
DECLARE
	pool bigint := bitpress_check_knn(k, oversample);
	rel regclass := bitpress_relation(rows);
	op text := CASE metric WHEN 'cosine' THEN '<=>' WHEN 'ip' THEN '<#>' WHEN 'l2' THEN '<->' END;
BEGIN
	IF op IS NULL THEN
		RAISE EXCEPTION 'metric must be cosine, ip or l2, got %', coalesce(metric, 'NULL')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- stage 1: the `pool` best codes by a bounded top-N heap sort that carries only each row's
	-- ctid (not the wide row), by Hamming distance to the query's code or, with asymmetric,
	-- by the float query's score against each code; stage 2: those rows by TID, exact distance
	IF bitpress_check_scoring(scoring, codebook) THEN
		RETURN QUERY EXECUTE format(
			'SELECT c.* FROM %1$s c WHERE c.ctid = ANY (ARRAY('
			'SELECT t.ctid FROM %1$s t ORDER BY bitpress_score(t.%2$I, $1, $2) DESC LIMIT $3)) '
			'ORDER BY c.%3$I %4$s $1 LIMIT $4', rel, code_column, vector_column, op)
			USING query, codebook, pool, k;
	ELSE
		RETURN QUERY EXECUTE format(
			'SELECT c.* FROM %1$s c WHERE c.ctid = ANY (ARRAY('
			'SELECT t.ctid FROM %1$s t ORDER BY hamming(t.%2$I, $1) LIMIT $2)) '
			'ORDER BY c.%3$I %4$s $3 LIMIT $4', rel, code_column, vector_column, op)
			USING CASE WHEN codebook IS NULL THEN binarize(query) ELSE binarize(query, codebook) END,
				  pool, query, k;
	END IF;
END $$;

COMMENT ON FUNCTION bitpress_knn(anyelement, text, text, vector, integer, integer, text, text, text) IS
	'k nearest rows of a table: top k*oversample codes by Hamming distance (or, scoring => ''asymmetric'', by the codebook''s score), reranked by exact cosine/ip/l2 on its vectors';

CREATE FUNCTION bitpress_knn_codes(rows anyelement, code_column text, query vector, k integer,
								   oversample integer DEFAULT 4, codebook text DEFAULT NULL,
								   scoring text DEFAULT 'hamming')
	RETURNS SETOF anyelement
	LANGUAGE plpgsql STABLE PARALLEL RESTRICTED AS $$
DECLARE
	pool bigint := bitpress_check_knn(k, oversample);
	rel regclass := bitpress_relation(rows);
BEGIN
	IF codebook IS NULL THEN
		IF bitpress_check_scoring(scoring, codebook) THEN
			RAISE EXCEPTION 'asymmetric scoring needs a codebook with reconstruction levels'
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
		RETURN QUERY EXECUTE format(
			'SELECT t.* FROM %s t ORDER BY hamming(t.%I, $1) LIMIT $2', rel, code_column)
			USING binarize(query), k;
	ELSIF bitpress_check_scoring(scoring, codebook) THEN
		-- every code scored against the float query
		RETURN QUERY EXECUTE format(
			'SELECT t.* FROM %s t ORDER BY bitpress_score(t.%I, $1, $2) DESC LIMIT $3', rel, code_column)
			USING query, codebook, k;
	ELSE
		-- Hamming candidates, reranked by the asymmetric score
		RETURN QUERY EXECUTE format(
			'SELECT c.* FROM %1$s c WHERE c.ctid = ANY (ARRAY('
			'SELECT t.ctid FROM %1$s t ORDER BY hamming(t.%2$I, $1) LIMIT $2)) '
			'ORDER BY bitpress_score(c.%2$I, $3, $4) DESC LIMIT $5', rel, code_column)
			USING binarize(query, codebook), pool, query, codebook, k;
	END IF;
END $$;

COMMENT ON FUNCTION bitpress_knn_codes(anyelement, text, vector, integer, integer, text, text) IS
	'k nearest rows from codes alone (no full vectors): Hamming top k*oversample reranked by the codebook''s asymmetric score, or with scoring => ''asymmetric'' every code scored';

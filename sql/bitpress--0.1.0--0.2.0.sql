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

CREATE FUNCTION bitpress_store_for(rel regclass, code_column text, OUT name text, OUT id_column text)
	LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
	-- the packed code store following rel.code_column, if bitpress.code_stores exists and has one
	IF to_regclass('bitpress.code_stores') IS NOT NULL THEN
		EXECUTE 'SELECT c.name, c.id_column FROM bitpress.code_stores c '
				'WHERE c.source = $1 AND c.code_column = $2 ORDER BY c.name LIMIT 1'
			INTO name, id_column USING rel::text, code_column;
	END IF;
END $$;

COMMENT ON FUNCTION bitpress_store_for(regclass, text) IS
	'internal: the packed code store (name, id column) that follows a table''s code column, if any';

CREATE FUNCTION bitpress_knn(rows anyelement, code_column text, vector_column text, query vector,
							 k integer, oversample integer DEFAULT 4, codebook text DEFAULT NULL,
							 metric text DEFAULT 'cosine', scoring text DEFAULT 'hamming')
	RETURNS SETOF anyelement
	LANGUAGE plpgsql STABLE PARALLEL RESTRICTED AS $$
DECLARE
	pool bigint := bitpress_check_knn(k, oversample);
	rel regclass := bitpress_relation(rows);
	op text := CASE metric WHEN 'cosine' THEN '<=>' WHEN 'ip' THEN '<#>' WHEN 'l2' THEN '<->' END;
	qcode varbit;
	store record;
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
		qcode := CASE WHEN codebook IS NULL THEN binarize(query) ELSE binarize(query, codebook) END;
		store := bitpress_store_for(rel, code_column);
		IF store.name IS NOT NULL THEN
			-- a packed code store follows this column: stage 1 is one C scan of its segments
			RETURN QUERY EXECUTE format(
				'SELECT c.* FROM %1$s c WHERE c.%2$I = ANY (ARRAY('
				'SELECT s.id FROM bitpress_store_knn($5, $1, $2::integer) s)) '
				'ORDER BY c.%3$I %4$s $3 LIMIT $4', rel, store.id_column, vector_column, op)
				USING qcode, pool, query, k, store.name;
		ELSE
			RETURN QUERY EXECUTE format(
				'SELECT c.* FROM %1$s c WHERE c.ctid = ANY (ARRAY('
				'SELECT t.ctid FROM %1$s t ORDER BY hamming(t.%2$I, $1) LIMIT $2)) '
				'ORDER BY c.%3$I %4$s $3 LIMIT $4', rel, code_column, vector_column, op)
				USING qcode, pool, query, k;
		END IF;
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
		PERFORM bitpress_check_scoring(scoring, codebook);  -- raises for asymmetric without a codebook
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

-- packed code stores --------------------------------------------------------------------------
-- The codes of a table's column, packed many per row in bitpress.code_segments (tables made by
-- `bitpress migrate`), kept exact under inserts, updates and deletes by statement triggers that
-- write bitpress.code_delta; bitpress_store_knn scans them with one C call per segment.

CREATE FUNCTION bitpress_store_knn(store text, query varbit, k integer)
	RETURNS TABLE (id bigint, distance integer)
	AS 'MODULE_PATHNAME', 'store_knn'
	LANGUAGE C STABLE STRICT PARALLEL SAFE ROWS 10;

COMMENT ON FUNCTION bitpress_store_knn(text, varbit, integer) IS
	'exact Hamming k-NN over a packed code store: the k ids nearest the query code, ascending by (distance, id)';

CREATE FUNCTION bitpress_store_rebuild(store text) RETURNS bigint
	LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE AS $$
DECLARE
	s bitpress.code_stores;
	n bigint;
BEGIN
	-- one rebuild at a time per store; writers of the source table are never blocked
	SELECT * INTO s FROM bitpress.code_stores c WHERE c.name = store FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'code store "%" does not exist', store USING ERRCODE = 'undefined_object';
	END IF;
	-- Order matters under READ COMMITTED (each statement its own snapshot): the delta is cleared
	-- first, so a change committed before the segments are read is either in the segments or
	-- still in the delta (which overrides them); never lost.
	DELETE FROM bitpress.code_delta d WHERE d.store = s.name;
	DELETE FROM bitpress.code_segments g WHERE g.store = s.name;
	-- ids: 4 bytes each (int4send) when the whole segment fits in int4, else 8 (int8send); the
	-- C scan tells them apart by length
	EXECUTE format(
		'INSERT INTO bitpress.code_segments (store, segment, n, ids, codes) '
		'SELECT $1, seg, count(*), '
		'       string_agg(CASE WHEN narrow THEN int4send(i::integer) ELSE int8send(i) END, '
		'                  ''''::bytea ORDER BY r), '
		'       string_agg(c, ''''::bytea ORDER BY r) '
		'FROM (SELECT i, c, r, (r - 1) / $2 AS seg, '
		'             bool_and(i BETWEEN -2147483648 AND 2147483647) OVER (PARTITION BY (r - 1) / $2) AS narrow '
		'      FROM (SELECT t.%1$I::bigint AS i, code_bytes(t.%2$I) AS c, '
		'                   row_number() OVER (ORDER BY t.%1$I) AS r '
		'            FROM %3$s t WHERE t.%2$I IS NOT NULL) x) y '
		'GROUP BY seg', s.id_column, s.code_column, s.source)
		USING s.name, s.segment_codes;
	SELECT coalesce(sum(g.n), 0) INTO n FROM bitpress.code_segments g WHERE g.store = s.name;
	RETURN n;
END $$;

COMMENT ON FUNCTION bitpress_store_rebuild(text) IS
	'rewrite a code store''s segments from its table and fold the delta in; returns the number of codes';

CREATE FUNCTION bitpress_store_track() RETURNS trigger
	LANGUAGE plpgsql AS $$
DECLARE
	s bitpress.code_stores;
BEGIN
	SELECT * INTO s FROM bitpress.code_stores c WHERE c.name = TG_ARGV[0];
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	IF TG_OP IN ('UPDATE', 'DELETE') THEN
		EXECUTE format('INSERT INTO bitpress.code_delta (store, id, code) '
					   'SELECT $1, o.%I::bigint, NULL FROM old_rows o', s.id_column) USING s.name;
	END IF;
	IF TG_OP IN ('INSERT', 'UPDATE') THEN
		EXECUTE format('INSERT INTO bitpress.code_delta (store, id, code) '
					   'SELECT $1, n.%1$I::bigint, code_bytes(n.%2$I) FROM new_rows n '
					   'WHERE n.%2$I IS NOT NULL', s.id_column, s.code_column) USING s.name;
	END IF;
	RETURN NULL;
END $$;

COMMENT ON FUNCTION bitpress_store_track() IS
	'internal: statement trigger that records a code store''s changed rows in bitpress.code_delta';

CREATE FUNCTION bitpress_store_create(store text, source regclass, id_column text, code_column text,
									  segment_codes integer DEFAULT 16384) RETURNS bigint
	LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE AS $$
DECLARE
	bits integer;
	lens bigint;
	trig text := 'bitpress_store_' || md5(store);
BEGIN
	IF segment_codes IS NULL OR segment_codes < 1 THEN
		RAISE EXCEPTION 'segment_codes must be at least 1, got %', coalesce(segment_codes::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	EXECUTE format('SELECT min(length(t.%1$I)), count(DISTINCT length(t.%1$I)) FROM %2$s t', code_column, source)
		INTO bits, lens;
	IF bits IS NULL THEN
		RAISE EXCEPTION 'column %.% holds no codes to size the store from', source, code_column
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF lens > 1 THEN
		RAISE EXCEPTION 'column %.% holds codes of % different lengths', source, code_column, lens
			USING ERRCODE = 'data_exception';
	END IF;
	INSERT INTO bitpress.code_stores (name, source, id_column, code_column, bits, segment_codes)
		VALUES (store, source::text, id_column, code_column, bits, segment_codes);
	EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
				   'FOR EACH STATEMENT EXECUTE FUNCTION bitpress_store_track(%L)', trig || '_i', source, store);
	EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
				   'FOR EACH STATEMENT EXECUTE FUNCTION bitpress_store_track(%L)', trig || '_u', source, store);
	EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
				   'FOR EACH STATEMENT EXECUTE FUNCTION bitpress_store_track(%L)', trig || '_d', source, store);
	RETURN bitpress_store_rebuild(store);
END $$;

COMMENT ON FUNCTION bitpress_store_create(text, regclass, text, text, integer) IS
	'create a packed code store over table.code_column (ids from id_column, unique bigint-castable), kept in sync by triggers; returns the number of codes';

CREATE FUNCTION bitpress_store_drop(store text) RETURNS void
	LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE AS $$
DECLARE
	s bitpress.code_stores;
	trig text := 'bitpress_store_' || md5(store);
BEGIN
	SELECT * INTO s FROM bitpress.code_stores c WHERE c.name = store;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'code store "%" does not exist', store USING ERRCODE = 'undefined_object';
	END IF;
	IF to_regclass(s.source) IS NOT NULL THEN
		EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trig || '_i', s.source);
		EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trig || '_u', s.source);
		EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trig || '_d', s.source);
	END IF;
	DELETE FROM bitpress.code_delta d WHERE d.store = s.name;
	DELETE FROM bitpress.code_segments g WHERE g.store = s.name;
	DELETE FROM bitpress.code_stores c WHERE c.name = s.name;
END $$;

COMMENT ON FUNCTION bitpress_store_drop(text) IS
	'remove a code store, its segments, its delta and its triggers';

CREATE FUNCTION bitpress_segment_knn(n integer, ids bytea, codes bytea, query varbit, k integer,
									 skip bigint[])
	RETURNS TABLE (id bigint, distance integer)
	AS 'MODULE_PATHNAME', 'segment_knn'
	-- COST: one call scans a whole segment (~0.2 ms), which is what makes workers worth starting
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE COST 1000000 ROWS 10;

COMMENT ON FUNCTION bitpress_segment_knn(integer, bytea, bytea, varbit, integer, bigint[]) IS
	'the k best codes of one packed segment, ids in skip left out (for parallel store scans)';

CREATE FUNCTION bitpress_store_knn_parallel(store text, query varbit, k integer)
	RETURNS TABLE (id bigint, distance integer)
	LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE ROWS 10
	SET jit = off  -- the per-segment COST must not trigger JIT compilation of this plan
	AS $$
BEGIN
	-- the same answer as bitpress_store_knn, as a plan whose segments PostgreSQL can split among
	-- parallel workers (one C call per segment, in the target list so that each call is costed);
	-- it pays off on large stores only: starting workers costs tens of milliseconds
	IF k < 1 THEN
		RAISE EXCEPTION 'k must be at least 1, got %', k USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM bitpress.code_stores c WHERE c.name = store) THEN
		RAISE EXCEPTION 'code store "%" does not exist', store USING ERRCODE = 'undefined_object';
	END IF;
	RETURN QUERY
	SELECT u.i, u.d FROM (
		SELECT (x.r).id AS i, (x.r).distance AS d
		FROM (SELECT bitpress_segment_knn(g.n, g.ids, g.codes, query, k,
					(SELECT coalesce(array_agg(y.id ORDER BY y.id), '{}')
					 FROM (SELECT DISTINCT e.id FROM bitpress.code_delta e WHERE e.store = $1) y)) AS r
			  FROM bitpress.code_segments g WHERE g.store = $1) x
		UNION ALL
		SELECT e.id, hamming(code_from_bytes(e.code, length(query)), query)
		FROM (SELECT DISTINCT ON (f.id) f.id, f.code FROM bitpress.code_delta f
			  WHERE f.store = $1 ORDER BY f.id, f.seq DESC) e
		WHERE e.code IS NOT NULL
	) u
	ORDER BY u.d, u.i
	LIMIT k;
END $$;

COMMENT ON FUNCTION bitpress_store_knn_parallel(text, varbit, integer) IS
	'bitpress_store_knn as a plan parallel workers can share (segments split among them); worth it on large stores';

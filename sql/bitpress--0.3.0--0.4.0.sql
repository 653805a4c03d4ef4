-- bitpress 0.4.0: code store segments read in place, and a parallel scan that merges partial
-- top-k states (an aggregate) instead of moving k rows per segment through Gather.
\echo Use "ALTER EXTENSION bitpress UPDATE TO '0.4.0'" to load this file. \quit

-- the k best of many segments as one aggregate, whose partial states combine --------------------

CREATE FUNCTION bitpress_segments_knn_step(internal, n integer, ids bytea, codes bytea, query varbit,
										   k integer, skip bigint[]) RETURNS internal
	AS 'MODULE_PATHNAME', 'segments_knn_step'
	-- COST: one call scans a whole segment, which is what makes workers worth starting
	LANGUAGE C IMMUTABLE PARALLEL SAFE COST 1000;

COMMENT ON FUNCTION bitpress_segments_knn_step(internal, integer, bytea, bytea, varbit, integer, bigint[]) IS
	'internal: transition function of bitpress_segments_knn (scores one segment into the top-k state)';

CREATE FUNCTION bitpress_segments_knn_combine(internal, internal) RETURNS internal
	AS 'MODULE_PATHNAME', 'segments_knn_combine'
	LANGUAGE C IMMUTABLE PARALLEL SAFE;

COMMENT ON FUNCTION bitpress_segments_knn_combine(internal, internal) IS
	'internal: merges two partial top-k states of bitpress_segments_knn';

CREATE FUNCTION bitpress_segments_knn_serial(internal) RETURNS bytea
	AS 'MODULE_PATHNAME', 'segments_knn_serial'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION bitpress_segments_knn_serial(internal) IS
	'internal: serializes a partial top-k state of bitpress_segments_knn for a parallel worker';

CREATE FUNCTION bitpress_segments_knn_deserial(bytea, internal) RETURNS internal
	AS 'MODULE_PATHNAME', 'segments_knn_deserial'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION bitpress_segments_knn_deserial(bytea, internal) IS
	'internal: reads back a partial top-k state of bitpress_segments_knn';

CREATE FUNCTION bitpress_segments_knn_final(internal) RETURNS bigint[]
	AS 'MODULE_PATHNAME', 'segments_knn_final'
	LANGUAGE C IMMUTABLE PARALLEL SAFE;

COMMENT ON FUNCTION bitpress_segments_knn_final(internal) IS
	'internal: the top-k state of bitpress_segments_knn as bigint[k][2] of (id, distance)';

CREATE AGGREGATE bitpress_segments_knn(n integer, ids bytea, codes bytea, query varbit, k integer,
									   skip bigint[]) (
	SFUNC = bitpress_segments_knn_step,
	STYPE = internal,
	COMBINEFUNC = bitpress_segments_knn_combine,
	SERIALFUNC = bitpress_segments_knn_serial,
	DESERIALFUNC = bitpress_segments_knn_deserial,
	FINALFUNC = bitpress_segments_knn_final,
	FINALFUNC_MODIFY = READ_WRITE,
	PARALLEL = SAFE
);

COMMENT ON AGGREGATE bitpress_segments_knn(integer, bytea, bytea, varbit, integer, bigint[]) IS
	'the k codes of many packed segments nearest the query, as bigint[k][2] of (id, distance) ascending by (distance, id); ids in skip left out. Runs as a parallel aggregate';

CREATE OR REPLACE FUNCTION bitpress_store_knn_parallel(store text, query varbit, k integer)
	RETURNS TABLE (id bigint, distance integer)
	LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE ROWS 10
	SET jit = off  -- the per-segment COST must not trigger JIT compilation of this plan
	AS $$
DECLARE
	s bitpress.code_stores;
BEGIN
	-- the same answer as bitpress_store_knn, as a parallel aggregate over the segment rows:
	-- each worker scores its share of the segments into a top-k state, the leader merges them;
	-- it pays off on large stores only: starting workers costs milliseconds
	IF k < 1 THEN
		RAISE EXCEPTION 'k must be at least 1, got %', k USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT * INTO s FROM bitpress.code_stores c WHERE c.name = store;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'code store "%" does not exist', store USING ERRCODE = 'undefined_object';
	END IF;
	IF s.bits <> length(query) THEN
		RAISE EXCEPTION 'bit length mismatch: % vs %', length(query), s.bits USING ERRCODE = 'data_exception';
	END IF;
	RETURN QUERY
	SELECT u.i, u.d FROM (
		SELECT x.a[j][1] AS i, x.a[j][2]::integer AS d
		FROM (SELECT bitpress_segments_knn(g.n, g.ids, g.codes, query, k,
					(SELECT coalesce(array_agg(y.id ORDER BY y.id), '{}')
					 FROM (SELECT DISTINCT e.id FROM bitpress.code_delta e WHERE e.store = $1) y)) AS a
			  FROM bitpress.code_segments g WHERE g.store = $1) x,
			 generate_subscripts(x.a, 1) j
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
	'bitpress_store_knn as a parallel aggregate (segments split among workers, partial top-k merged); worth it on large stores';

CREATE OR REPLACE FUNCTION bitpress_store_rebuild(store text) RETURNS bigint
	LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE AS $$
DECLARE
	s bitpress.code_stores;
	n bigint;
	nbytes integer;
	room integer;
	per4 integer;
	per8 integer;
BEGIN
	-- one rebuild at a time per store; writers of the source table are never blocked
	SELECT * INTO s FROM bitpress.code_stores c WHERE c.name = store FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'code store "%" does not exist', store USING ERRCODE = 'undefined_object';
	END IF;
	-- codes per segment: with inline segments (STORAGE PLAIN, schema revision 0006) as many as
	-- fit one heap page with their ids (8160 bytes a tuple, less the row's other columns), so a
	-- query scores them where they lie in shared buffers; segment_codes is an upper bound
	nbytes := (s.bits + 7) / 8;
	per4 := s.segment_codes;
	per8 := s.segment_codes;
	IF EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = 'bitpress.code_segments'::regclass
			   AND a.attname = 'codes' AND a.attstorage = 'p') THEN
		room := 8100 - octet_length(s.name);
		per4 := least(per4, room / (nbytes + 4));
		per8 := least(per8, room / (nbytes + 8));
		IF per8 < 1 THEN
			RAISE EXCEPTION 'codes of % bits do not fit a code store segment (one heap page)', s.bits
				USING ERRCODE = 'program_limit_exceeded';
		END IF;
	END IF;
	-- Order matters under READ COMMITTED (each statement its own snapshot): the delta is cleared
	-- first, so a change committed before the segments are read is either in the segments or
	-- still in the delta (which overrides them); never lost.
	DELETE FROM bitpress.code_delta d WHERE d.store = s.name;
	DELETE FROM bitpress.code_segments g WHERE g.store = s.name;
	-- ids: 4 bytes each (int4send) when every id of a segment fits in int4, else 8 (int8send);
	-- the C scan tells them apart by length. Segments hold per4 codes when all ids fit, else
	-- per8. One statement, so sizes and rows come from one snapshot.
	EXECUTE format(
		'INSERT INTO bitpress.code_segments (store, segment, n, ids, codes) '
		'SELECT $1, seg, count(*), '
		'       CASE WHEN bool_and(fits) '
		'            THEN string_agg(CASE WHEN fits THEN int4send(i::integer) END, ''''::bytea ORDER BY r) '
		'            ELSE string_agg(int8send(i), ''''::bytea ORDER BY r) END, '
		'       string_agg(c, ''''::bytea ORDER BY r) '
		'FROM (SELECT i, c, r, fits, (r - 1) / CASE WHEN all_fit THEN $2 ELSE $3 END AS seg '
		'      FROM (SELECT i, c, fits, row_number() OVER (ORDER BY i) AS r, '
		'                   bool_and(fits) OVER () AS all_fit '
		'            FROM (SELECT t.%1$I::bigint AS i, code_bytes(t.%2$I) AS c, '
		'                         t.%1$I::bigint BETWEEN -2147483648 AND 2147483647 AS fits '
		'                  FROM %3$s t WHERE t.%2$I IS NOT NULL) x) y) z '
		'GROUP BY seg', s.id_column, s.code_column, s.source)
		USING s.name, per4, per8;
	SELECT coalesce(sum(g.n), 0) INTO n FROM bitpress.code_segments g WHERE g.store = s.name;
	IF EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = 'bitpress.code_stores'::regclass
			   AND a.attname = 'segments' AND NOT a.attisdropped) THEN
		-- what bitpress_store_knn checks its scan against, and the blocks it reads
		EXECUTE 'UPDATE bitpress.code_stores c SET segments = g.cnt, first_block = g.lo, last_block = g.hi '
				'FROM (SELECT count(*) AS cnt, min((ctid::text::point)[0])::bigint AS lo, '
				'             max((ctid::text::point)[0])::bigint AS hi '
				'      FROM bitpress.code_segments WHERE store = $1) g '
				'WHERE c.name = $1' USING s.name;
	END IF;
	RETURN n;
END $$;

COMMENT ON FUNCTION bitpress_store_create(text, regclass, text, text, integer) IS
	'create a packed code store over table.code_column (ids from id_column, unique bigint-castable), kept in sync by triggers; segment_codes caps the codes per segment (a segment fills at most one heap page); returns the number of codes';

-- bitpress 0.5.0: hardening. Nothing read from a table is trusted, no result is a non-value,
-- and code stores follow their table (by OID) under its privileges and row-level security.
\echo Use "ALTER EXTENSION bitpress UPDATE TO '0.5.0'" to load this file. \quit

-- values: pgvector's other types, NULL queries, results checked ----------------------------------

-- binarize() of pgvector's halfvec and sparsevec (pgvector 0.7 and later), as of vector: the
-- same bits as binary_quantize() without a codebook; a sparsevec's absent entries are 0.
DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['halfvec', 'sparsevec'] LOOP
		CONTINUE WHEN to_regtype(t) IS NULL;
		EXECUTE format('CREATE FUNCTION binarize(%1$s) RETURNS varbit AS %2$L, %3$L '
					   'LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE', t, 'MODULE_PATHNAME', 'binarize_' || t);
		EXECUTE format('CREATE FUNCTION binarize(%1$s, real[]) RETURNS varbit AS %2$L, %3$L '
					   'LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE', t, 'MODULE_PATHNAME', 'binarize_' || t);
		EXECUTE format('CREATE FUNCTION binarize(%1$s, codebook text) RETURNS varbit AS %2$L, %3$L '
					   'LANGUAGE C STABLE STRICT PARALLEL SAFE', t, 'MODULE_PATHNAME', 'binarize_' || t || '_codebook');
		EXECUTE format('CREATE FUNCTION binarize(%1$s, codebook text, version integer) RETURNS varbit AS %2$L, %3$L '
					   'LANGUAGE C STABLE STRICT PARALLEL SAFE', t, 'MODULE_PATHNAME', 'binarize_' || t || '_codebook');
		EXECUTE format('COMMENT ON FUNCTION binarize(%1$s) IS %2$L', t,
					   'one bit per dimension of a ' || t || ', 1 where the value is > 0; equals pgvector binary_quantize()');
		EXECUTE format('COMMENT ON FUNCTION binarize(%1$s, real[]) IS %2$L', t,
					   'one bit per dimension of a ' || t || ', 1 where v[i] > thresholds[i]');
		EXECUTE format('COMMENT ON FUNCTION binarize(%1$s, text) IS %2$L', t,
					   'code of a ' || t || ' under the latest version of a codebook stored in bitpress.codebooks');
		EXECUTE format('COMMENT ON FUNCTION binarize(%1$s, text, integer) IS %2$L', t,
					   'code of a ' || t || ' under one version of a codebook stored in bitpress.codebooks');
	END LOOP;
END $$;

-- The k-NN functions raise on a NULL query (22004) instead of answering arbitrary rows, and a
-- row without a code is never a candidate, with a store or without one.

CREATE OR REPLACE FUNCTION bitpress_knn(rows anyelement, code_column text, vector_column text, query vector,
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
	IF query IS NULL THEN
		RAISE EXCEPTION 'query must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
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
			'SELECT t.ctid FROM %1$s t WHERE t.%2$I IS NOT NULL ORDER BY bitpress_score(t.%2$I, $1, $2) DESC LIMIT $3)) '
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
				'SELECT t.ctid FROM %1$s t WHERE t.%2$I IS NOT NULL ORDER BY hamming(t.%2$I, $1) LIMIT $2)) '
				'ORDER BY c.%3$I %4$s $3 LIMIT $4', rel, code_column, vector_column, op)
				USING qcode, pool, query, k;
		END IF;
	END IF;
END $$;

CREATE OR REPLACE FUNCTION bitpress_knn_codes(rows anyelement, code_column text, query vector, k integer,
								   oversample integer DEFAULT 4, codebook text DEFAULT NULL,
								   scoring text DEFAULT 'hamming')
	RETURNS SETOF anyelement
	LANGUAGE plpgsql STABLE PARALLEL RESTRICTED AS $$
DECLARE
	pool bigint := bitpress_check_knn(k, oversample);
	rel regclass := bitpress_relation(rows);
BEGIN
	IF query IS NULL THEN
		RAISE EXCEPTION 'query must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF codebook IS NULL THEN
		PERFORM bitpress_check_scoring(scoring, codebook);  -- raises for asymmetric without a codebook
		RETURN QUERY EXECUTE format(
			'SELECT t.* FROM %1$s t WHERE t.%2$I IS NOT NULL ORDER BY hamming(t.%2$I, $1) LIMIT $2', rel, code_column)
			USING binarize(query), k;
	ELSIF bitpress_check_scoring(scoring, codebook) THEN
		-- every code scored against the float query
		RETURN QUERY EXECUTE format(
			'SELECT t.* FROM %1$s t WHERE t.%2$I IS NOT NULL ORDER BY bitpress_score(t.%2$I, $1, $2) DESC LIMIT $3', rel, code_column)
			USING query, codebook, k;
	ELSE
		-- Hamming candidates, reranked by the asymmetric score
		RETURN QUERY EXECUTE format(
			'SELECT c.* FROM %1$s c WHERE c.ctid = ANY (ARRAY('
			'SELECT t.ctid FROM %1$s t WHERE t.%2$I IS NOT NULL ORDER BY hamming(t.%2$I, $1) LIMIT $2)) '
			'ORDER BY bitpress_score(c.%2$I, $3, $4) DESC LIMIT $5', rel, code_column)
			USING binarize(query, codebook), pool, query, codebook, k;
	END IF;
END $$;


-- code stores: tracked by OID, invariants, integrity, privileges ---------------------------------

-- A store's ids must be unique integers and never NULL, its codes one length: checked when it is
-- created and rebuilt, and by the triggers on every write, so a store never holds two codes for
-- one id (1.4 and 1.2 both cast to 1) or codes it cannot score.

CREATE FUNCTION bitpress_store_check_source(source regclass, id_column text, code_column text)
	RETURNS void
	LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
	idtype regtype;
	idnum smallint;
	idnotnull boolean;
BEGIN
	SELECT a.atttypid::regtype, a.attnum, a.attnotnull INTO idtype, idnum, idnotnull
		FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = source AND a.attname = id_column AND a.attnum > 0 AND NOT a.attisdropped;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'column "%" of relation % does not exist', id_column, source
			USING ERRCODE = 'undefined_column';
	END IF;
	IF idtype NOT IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype) THEN
		RAISE EXCEPTION 'the id column %.% is %, a code store needs smallint, integer or bigint ids',
			source, id_column, idtype
			USING ERRCODE = 'datatype_mismatch',
				  HINT = 'Two ids of another type can become the same bigint (1.4 and 1.2 are both 1).';
	END IF;
	IF NOT idnotnull THEN
		RAISE EXCEPTION 'the id column %.% must be NOT NULL for a code store', source, id_column
			USING ERRCODE = 'not_null_violation';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
				   WHERE i.indrelid = source AND i.indisunique AND i.indpred IS NULL
					 AND i.indexprs IS NULL AND i.indnkeyatts = 1 AND i.indkey[0] = idnum
					 AND i.indimmediate AND i.indisvalid) THEN
		RAISE EXCEPTION 'the id column %.% needs a PRIMARY KEY or UNIQUE constraint for a code store',
			source, id_column
			USING ERRCODE = 'invalid_table_definition',
				  HINT = 'A code store keeps one code per id.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
				   WHERE a.attrelid = source AND a.attname = code_column AND a.attnum > 0
					 AND NOT a.attisdropped
					 AND a.atttypid IN ('bit'::regtype, 'varbit'::regtype)) THEN
		RAISE EXCEPTION 'column "%" of relation % is not a bit(n) or bit varying column', code_column, source
			USING ERRCODE = 'datatype_mismatch';
	END IF;
END $$;

COMMENT ON FUNCTION bitpress_store_check_source(regclass, text, text) IS
	'internal: checks that a table can back a code store (unique NOT NULL integer ids, a bit column)';

-- The triggers write the delta as the extension's owner (SECURITY DEFINER, search_path pinned
-- to pg_catalog), so a role that may write the table never needs rights on schema bitpress;
-- only the table a store follows may write its delta (a trigger someone else made on another
-- table, naming the store, is refused).
CREATE OR REPLACE FUNCTION bitpress_store_track() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	s bitpress.code_stores;
	bad bigint;
BEGIN
	SELECT * INTO s FROM bitpress.code_stores c WHERE c.name = TG_ARGV[0];
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	-- (a store written before revision 0008 names its table as text: not checked)
	IF (CASE WHEN pg_typeof(s.source) = 'regclass'::regtype THEN s.source::text::regclass::oid <> TG_RELID
			 ELSE false END) THEN
		RAISE EXCEPTION 'code store "%" follows table %, not %', s.name, s.source, TG_RELID::regclass
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF TG_OP IN ('INSERT', 'UPDATE') THEN
		-- what the store could not hold is refused with the statement that wrote it
		EXECUTE format('SELECT count(*) FROM new_rows n WHERE n.%1$I IS NULL AND n.%2$I IS NOT NULL',
					   s.id_column, s.code_column) INTO bad;
		IF bad > 0 THEN
			RAISE EXCEPTION 'code store "%": % rows have a code and a NULL id (%)', s.name, bad, s.id_column
				USING ERRCODE = 'not_null_violation';
		END IF;
		EXECUTE format('SELECT min(length(n.%1$I)) FROM new_rows n WHERE length(n.%1$I) <> $1',
					   s.code_column) INTO bad USING s.bits;
		IF bad IS NOT NULL THEN
			RAISE EXCEPTION 'code store "%" holds codes of % bits, got one of % bits in column %',
				s.name, s.bits, bad, s.code_column
				USING ERRCODE = 'data_exception';
		END IF;
	END IF;
	IF TG_OP IN ('UPDATE', 'DELETE') THEN
		EXECUTE format('INSERT INTO bitpress.code_delta (store, id, code) '
					   'SELECT $1, o.%I::bigint, NULL FROM old_rows o', s.id_column) USING s.name;
	END IF;
	IF TG_OP IN ('INSERT', 'UPDATE') THEN
		-- the code's bytes as code_bytes() gives them, from pg_catalog alone (varbit_send: a
		-- 4-byte length, then the bytes)
		EXECUTE format('INSERT INTO bitpress.code_delta (store, id, code) '
					   'SELECT $1, n.%1$I::bigint, substring(varbit_send(n.%2$I::varbit) FROM 5) FROM new_rows n '
					   'WHERE n.%2$I IS NOT NULL', s.id_column, s.code_column) USING s.name;
	END IF;
	RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION bitpress_store_create(store text, source regclass, id_column text, code_column text,
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
	PERFORM bitpress_store_check_source(source, id_column, code_column);
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
		VALUES (store, source, id_column, code_column, bits, segment_codes);
	EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
				   'FOR EACH STATEMENT EXECUTE FUNCTION bitpress_store_track(%L)', trig || '_i', source, store);
	EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
				   'FOR EACH STATEMENT EXECUTE FUNCTION bitpress_store_track(%L)', trig || '_u', source, store);
	EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
				   'FOR EACH STATEMENT EXECUTE FUNCTION bitpress_store_track(%L)', trig || '_d', source, store);
	RETURN bitpress_store_rebuild(store);
END $$;

-- A store follows its table by OID (schema revision 0008 makes bitpress.code_stores.source a
-- regclass: renames are followed, a table of the same name elsewhere is never read) and serves
-- exactly the roles that may read the table (store_access.c): SELECT on its id and code columns,
-- no row-level security policy acting on them, and only while its three triggers are in place.

CREATE FUNCTION bitpress_store_readable(store text, source regclass, id_column text, code_column text,
										raise boolean DEFAULT false) RETURNS boolean
	AS 'MODULE_PATHNAME', 'store_readable_sql'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION bitpress_store_readable(text, regclass, text, text, boolean) IS
	'whether code store "store" may serve the current role: it may read the table''s id and code columns, no row-level security acts on it, the store''s triggers are in place (raise => the reason as an error)';

-- SECURITY DEFINER, so that any role can learn which stores exist (as pg_trigger tells anyway)
-- and be told precisely why one does not serve it (LANGUAGE sql: no PL/pgSQL interpreter on
-- every store query); every name in it is schema-qualified, and
-- the unqualified source of a store written before revision 0008 resolves as it did then,
-- under the caller's search_path.
CREATE FUNCTION bitpress_store_catalog()
	RETURNS TABLE (name text, source regclass, id_column text, code_column text, bits integer,
				   segments bigint, first_block bigint, last_block bigint)
	LANGUAGE sql STABLE SECURITY DEFINER PARALLEL SAFE ROWS 10 AS $$
	SELECT c.name,
		   CASE WHEN pg_catalog.pg_typeof(c.source) OPERATOR(pg_catalog.=) 'pg_catalog.regclass'::pg_catalog.regtype
				THEN c.source::pg_catalog.oid::pg_catalog.regclass
				ELSE pg_catalog.to_regclass(c.source::pg_catalog.text) END,
		   c.id_column, c.code_column, c.bits,
		   (j OPERATOR(pg_catalog.->>) 'segments')::pg_catalog.int8,
		   (j OPERATOR(pg_catalog.->>) 'first_block')::pg_catalog.int8,
		   (j OPERATOR(pg_catalog.->>) 'last_block')::pg_catalog.int8
	FROM bitpress.code_stores c, pg_catalog.to_jsonb(c) j
$$;

COMMENT ON FUNCTION bitpress_store_catalog() IS
	'internal: every code store''s table (by OID), columns, code length and recorded segments, for any role';

-- Every segment carries a checksum (schema revision 0007), written by the rebuild and checked
-- by every read, serial or parallel; the parallel read also checks it met every segment.

CREATE FUNCTION bitpress_segment_checksum(ids bytea, codes bytea) RETURNS bigint
	AS 'MODULE_PATHNAME', 'segment_checksum'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION bitpress_segment_checksum(bytea, bytea) IS
	'internal: the checksum stored beside a packed code segment (bp_segment_checksum of its ids and codes)';

CREATE FUNCTION bitpress_segments_knn_step(internal, n integer, ids bytea, codes bytea, query varbit,
										   k integer, skip bigint[], checksum bigint) RETURNS internal
	AS 'MODULE_PATHNAME', 'segments_knn_step'
	LANGUAGE C IMMUTABLE PARALLEL SAFE COST 1000;

COMMENT ON FUNCTION bitpress_segments_knn_step(internal, integer, bytea, bytea, varbit, integer, bigint[], bigint) IS
	'internal: transition function of bitpress_segments_knn (checks a segment''s checksum, scores it into the top-k state)';

CREATE AGGREGATE bitpress_segments_knn(n integer, ids bytea, codes bytea, query varbit, k integer,
									   skip bigint[], checksum bigint) (
	SFUNC = bitpress_segments_knn_step,
	STYPE = internal,
	COMBINEFUNC = bitpress_segments_knn_combine,
	SERIALFUNC = bitpress_segments_knn_serial,
	DESERIALFUNC = bitpress_segments_knn_deserial,
	FINALFUNC = bitpress_segments_knn_final,
	FINALFUNC_MODIFY = READ_WRITE,
	PARALLEL = SAFE
);

COMMENT ON AGGREGATE bitpress_segments_knn(integer, bytea, bytea, varbit, integer, bigint[], bigint) IS
	'bitpress_segments_knn over checksummed segments: a segment whose bytes do not match its checksum raises XX001';

CREATE FUNCTION bitpress_store_check_segments(store text, seen bigint, expected bigint) RETURNS boolean
	LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
	IF expected IS NOT NULL AND seen IS DISTINCT FROM expected THEN
		RAISE EXCEPTION 'code store "%": found % segments, its last rebuild wrote %', store, seen, expected
			USING ERRCODE = 'data_corrupted', HINT = format('Rebuild it with bitpress_store_rebuild(%L).', store);
	END IF;
	RETURN true;
END $$;

COMMENT ON FUNCTION bitpress_store_check_segments(text, bigint, bigint) IS
	'internal: raises XX001 when a parallel store scan met another number of segments than the last rebuild wrote';

CREATE OR REPLACE FUNCTION bitpress_store_knn_parallel(store text, query varbit, k integer)
	RETURNS TABLE (id bigint, distance integer)
	LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE ROWS 10
	SET jit = off  -- the per-segment COST must not trigger JIT compilation of this plan
	AS $$
DECLARE
	s record;
	sums boolean;
BEGIN
	-- the same answer and the same checks as bitpress_store_knn, as a parallel aggregate: each
	-- worker checks and scores its share of the segments, the leader merges them and checks
	-- that every segment the last rebuild wrote was met
	IF k < 1 THEN
		RAISE EXCEPTION 'k must be at least 1, got %', k USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT * INTO s FROM bitpress_store_catalog() c WHERE c.name = store;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'code store "%" does not exist', store USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM bitpress_store_readable(s.name, s.source, s.id_column, s.code_column, true);
	IF s.bits IS NULL THEN
		RAISE EXCEPTION 'code store "%": bitpress.code_stores has a NULL bits', store
			USING ERRCODE = 'data_corrupted';
	END IF;
	IF s.bits <> length(query) THEN
		RAISE EXCEPTION 'different bit lengths % and %', length(query), s.bits USING ERRCODE = 'data_exception';
	END IF;
	IF EXISTS (SELECT 1 FROM bitpress.code_delta e WHERE e.store = $1 AND e.id IS NULL) THEN
		RAISE EXCEPTION 'code store "%": bitpress.code_delta has a NULL id', store USING ERRCODE = 'data_corrupted';
	END IF;
	-- one statement (RETURN QUERY), so that workers are launched, with the segment count
	-- checked in it; segments are checked against their checksums once revision 0007 has them
	sums := EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = 'bitpress.code_segments'::regclass
					AND a.attname = 'checksum' AND NOT a.attisdropped);
	RETURN QUERY EXECUTE format(
		'SELECT u.i, u.d FROM ('
		'  SELECT x.a[j][1] AS i, x.a[j][2]::integer AS d'
		'  FROM (SELECT bitpress_segments_knn(g.n, g.ids, g.codes, $2, $3,'
		'              (SELECT coalesce(array_agg(y.id ORDER BY y.id), ''{}'')'
		'               FROM (SELECT DISTINCT e.id FROM bitpress.code_delta e WHERE e.store = $1) y)%s) AS a,'
		'               count(*) AS seen'
		'        FROM bitpress.code_segments g WHERE g.store = $1) x,'
		'       generate_subscripts(x.a, 1) j'
		'  WHERE bitpress_store_check_segments($1, x.seen, $4)'
		'  UNION ALL'
		'  SELECT e.id, hamming(code_from_bytes(e.code, length($2)), $2)'
		'  FROM (SELECT DISTINCT ON (f.id) f.id, f.code FROM bitpress.code_delta f'
		'        WHERE f.store = $1 ORDER BY f.id, f.seq DESC) e'
		'  WHERE e.code IS NOT NULL'
		') u ORDER BY u.d, u.i LIMIT $3', CASE WHEN sums THEN ', g.checksum' ELSE '' END)
		USING store, query, k, s.segments;
END $$;

COMMENT ON FUNCTION bitpress_store_knn_parallel(text, varbit, integer) IS
	'bitpress_store_knn as a parallel aggregate (segments split among workers, partial top-k merged, every segment checked); worth it on large stores';


CREATE OR REPLACE FUNCTION bitpress_store_rebuild(store text) RETURNS bigint
	LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE AS $$
DECLARE
	s bitpress.code_stores;
	n bigint;
	nbytes integer;
	room integer;
	per4 integer;
	per8 integer;
	sums boolean;
	lens bigint;
BEGIN
	-- one rebuild at a time per store; writers of the source table are never blocked
	SELECT * INTO s FROM bitpress.code_stores c WHERE c.name = store FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'code store "%" does not exist', store USING ERRCODE = 'undefined_object';
	END IF;
	-- the store must still follow its table, be readable whole by this role (no row-level
	-- security would hide rows from it), and hold what it can hold (ids, one code length)
	PERFORM bitpress_store_readable(s.name, s.source::regclass, s.id_column, s.code_column, true);
	PERFORM bitpress_store_check_source(s.source::regclass, s.id_column, s.code_column);
	EXECUTE format('SELECT count(*) FROM %s t WHERE length(t.%I) <> $1', s.source, s.code_column)
		INTO lens USING s.bits;
	IF lens > 0 THEN
		RAISE EXCEPTION 'code store "%" holds codes of % bits, column %.% has % codes of another length',
			s.name, s.bits, s.source, s.code_column, lens USING ERRCODE = 'data_exception';
	END IF;
	sums := EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = 'bitpress.code_segments'::regclass
					AND a.attname = 'checksum' AND NOT a.attisdropped);
	-- codes per segment: with inline segments (STORAGE PLAIN, schema revision 0006) as many as
	-- fit one heap page with their ids (8160 bytes a tuple, less the row's other columns), so a
	-- query scores them where they lie in shared buffers; segment_codes is an upper bound
	nbytes := (s.bits + 7) / 8;
	per4 := s.segment_codes;
	per8 := s.segment_codes;
	IF EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = 'bitpress.code_segments'::regclass
			   AND a.attname = 'codes' AND a.attstorage = 'p') THEN
		room := 8100 - octet_length(s.name) - CASE WHEN sums THEN 16 ELSE 0 END;
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
	-- with schema revision 0007 each segment also gets its checksum, computed from the bytes
	-- written in the same statement
	EXECUTE format(
		'INSERT INTO bitpress.code_segments (store, segment, n, ids, codes%4$s) '
		'SELECT $1, seg, cnt, ids, codes%5$s FROM ('
		'SELECT seg, count(*) AS cnt, '
		'       CASE WHEN bool_and(fits) '
		'            THEN string_agg(CASE WHEN fits THEN int4send(i::integer) END, ''''::bytea ORDER BY r) '
		'            ELSE string_agg(int8send(i), ''''::bytea ORDER BY r) END AS ids, '
		'       string_agg(c, ''''::bytea ORDER BY r) AS codes '
		'FROM (SELECT i, c, r, fits, (r - 1) / CASE WHEN all_fit THEN $2 ELSE $3 END AS seg '
		'      FROM (SELECT i, c, fits, row_number() OVER (ORDER BY i) AS r, '
		'                   bool_and(fits) OVER () AS all_fit '
		'            FROM (SELECT t.%1$I::bigint AS i, code_bytes(t.%2$I) AS c, '
		'                         t.%1$I::bigint BETWEEN -2147483648 AND 2147483647 AS fits '
		'                  FROM %3$s t WHERE t.%2$I IS NOT NULL) x) y) z '
		'GROUP BY seg) w', s.id_column, s.code_column, s.source,
		CASE WHEN sums THEN ', checksum' ELSE '' END,
		CASE WHEN sums THEN ', bitpress_segment_checksum(ids, codes)' ELSE '' END)
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

CREATE OR REPLACE FUNCTION bitpress_store_for(rel regclass, code_column text, OUT name text, OUT id_column text)
	LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
	-- the packed code store following rel.code_column that may serve this role, if any (else
	-- bitpress_knn scans the table itself, through its privileges and policies)
	IF to_regclass('bitpress.code_stores') IS NOT NULL THEN
		SELECT c.name, c.id_column INTO name, id_column FROM bitpress_store_catalog() c
			WHERE c.source = rel AND c.code_column = bitpress_store_for.code_column
			  AND bitpress_store_readable(c.name, c.source, c.id_column, c.code_column)
			ORDER BY c.name LIMIT 1;
	END IF;
END $$;

CREATE OR REPLACE FUNCTION bitpress_store_drop(store text) RETURNS void
	LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE AS $$
DECLARE
	rel regclass;
	trig text := 'bitpress_store_' || md5(store);
BEGIN
	-- the triggers are dropped on the table the store follows, renamed or not (DROP TRIGGER
	-- locks it ACCESS EXCLUSIVE until commit, as any DROP TRIGGER does)
	SELECT c.source INTO rel FROM bitpress_store_catalog() c WHERE c.name = store;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'code store "%" does not exist', store USING ERRCODE = 'undefined_object';
	END IF;
	IF EXISTS (SELECT 1 FROM pg_catalog.pg_class r WHERE r.oid = rel) THEN
		EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trig || '_i', rel);
		EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trig || '_u', rel);
		EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trig || '_d', rel);
	END IF;
	DELETE FROM bitpress.code_delta d WHERE d.store = bitpress_store_drop.store;
	DELETE FROM bitpress.code_segments g WHERE g.store = bitpress_store_drop.store;
	DELETE FROM bitpress.code_stores c WHERE c.name = bitpress_store_drop.store;
END $$;

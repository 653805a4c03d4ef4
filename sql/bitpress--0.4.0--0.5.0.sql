-- bitpress 0.5.0: hardening. Nothing read from a table is trusted, no result is a non-value,
-- and code stores follow their table (by OID) under its privileges and row-level security.
\echo Use "ALTER EXTENSION bitpress UPDATE TO '0.5.0'" to load this file. \quit

-- values: pgvector's other types, NULL queries, results checked ----------------------------------

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

CREATE OR REPLACE FUNCTION bitpress_store_track() RETURNS trigger
	LANGUAGE plpgsql AS $$
DECLARE
	s bitpress.code_stores;
	bad bigint;
BEGIN
	SELECT * INTO s FROM bitpress.code_stores c WHERE c.name = TG_ARGV[0];
	IF NOT FOUND THEN
		RETURN NULL;
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
		EXECUTE format('INSERT INTO bitpress.code_delta (store, id, code) '
					   'SELECT $1, n.%1$I::bigint, code_bytes(n.%2$I) FROM new_rows n '
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
		VALUES (store, source::text, id_column, code_column, bits, segment_codes);
	EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
				   'FOR EACH STATEMENT EXECUTE FUNCTION bitpress_store_track(%L)', trig || '_i', source, store);
	EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
				   'FOR EACH STATEMENT EXECUTE FUNCTION bitpress_store_track(%L)', trig || '_u', source, store);
	EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
				   'FOR EACH STATEMENT EXECUTE FUNCTION bitpress_store_track(%L)', trig || '_d', source, store);
	RETURN bitpress_store_rebuild(store);
END $$;

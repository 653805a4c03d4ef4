-- bitpress 0.6.0: bitpress_ivf, an approximate index over pgvector's vector: IVF lists of
-- RaBitQ codes (rotated residuals, 1 to 4 bits per dimension), reranked with exact distances.
\echo Use "ALTER EXTENSION bitpress UPDATE TO '0.6.0'" to load this file. \quit

CREATE FUNCTION bitpress_ivf_handler(internal) RETURNS index_am_handler
	AS 'MODULE_PATHNAME' LANGUAGE C;
CREATE ACCESS METHOD bitpress_ivf TYPE INDEX HANDLER bitpress_ivf_handler;
COMMENT ON ACCESS METHOD bitpress_ivf IS
	'bitpress IVF index: lists of RaBitQ codes, exact rerank from the table (lists, bits; bitpress.probes, bitpress.epsilon)';
COMMENT ON FUNCTION bitpress_ivf_handler(internal) IS 'the bitpress_ivf access method''s handler';

-- support function 1 of each operator class: the distance the index estimates
CREATE FUNCTION bitpress_ivf_l2(internal) RETURNS integer
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION bitpress_ivf_ip(internal) RETURNS integer
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION bitpress_ivf_cosine(internal) RETURNS integer
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION bitpress_ivf_l2(internal) IS 'bitpress_l2_ops support: the index ranks by Euclidean distance (<->)';
COMMENT ON FUNCTION bitpress_ivf_ip(internal) IS 'bitpress_ip_ops support: the index ranks by negative inner product (<#>)';
COMMENT ON FUNCTION bitpress_ivf_cosine(internal) IS 'bitpress_cosine_ops support: the index ranks by cosine distance (<=>)';

CREATE OPERATOR CLASS bitpress_l2_ops FOR TYPE vector USING bitpress_ivf AS
	OPERATOR 1 <-> (vector, vector) FOR ORDER BY float_ops,
	FUNCTION 1 bitpress_ivf_l2(internal);
CREATE OPERATOR CLASS bitpress_ip_ops FOR TYPE vector USING bitpress_ivf AS
	OPERATOR 1 <#> (vector, vector) FOR ORDER BY float_ops,
	FUNCTION 1 bitpress_ivf_ip(internal);
CREATE OPERATOR CLASS bitpress_cosine_ops DEFAULT FOR TYPE vector USING bitpress_ivf AS
	OPERATOR 1 <=> (vector, vector) FOR ORDER BY float_ops,
	FUNCTION 1 bitpress_ivf_cosine(internal);

-- the same over pgvector's halfvec (0.7 and later): codes from the halves, rerank in float
DO $$
BEGIN
	IF to_regtype('halfvec') IS NOT NULL THEN
		CREATE OPERATOR CLASS bitpress_halfvec_l2_ops FOR TYPE halfvec USING bitpress_ivf AS
			OPERATOR 1 <-> (halfvec, halfvec) FOR ORDER BY float_ops,
			FUNCTION 1 bitpress_ivf_l2(internal);
		CREATE OPERATOR CLASS bitpress_halfvec_ip_ops FOR TYPE halfvec USING bitpress_ivf AS
			OPERATOR 1 <#> (halfvec, halfvec) FOR ORDER BY float_ops,
			FUNCTION 1 bitpress_ivf_ip(internal);
		CREATE OPERATOR CLASS bitpress_halfvec_cosine_ops DEFAULT FOR TYPE halfvec USING bitpress_ivf AS
			OPERATOR 1 <=> (halfvec, halfvec) FOR ORDER BY float_ops,
			FUNCTION 1 bitpress_ivf_cosine(internal);
	END IF;
END
$$;

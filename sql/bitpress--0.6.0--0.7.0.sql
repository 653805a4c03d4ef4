-- bitpress 0.6.0 -> 0.7.0: RaBitQ codebooks (the bitpress_ivf estimator with one list) serve
-- binarize(v, 'name') and bitpress_score(code, q, 'name'); the C core knows them by their
-- parameters' flags. The k-NN functions refuse Hamming scoring under such a codebook, whose
-- codes end in float correction factors that a Hamming distance would count as bits.
\echo Use "ALTER EXTENSION bitpress UPDATE TO '0.7.0'" to load this file. \quit

CREATE OR REPLACE FUNCTION bitpress_check_scoring(scoring text, codebook text) RETURNS boolean
	LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
	rabitq boolean := false;
BEGIN
	IF scoring IS NULL OR scoring NOT IN ('hamming', 'asymmetric') THEN
		RAISE EXCEPTION 'scoring must be hamming or asymmetric, got %', coalesce(scoring, 'NULL')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF scoring = 'asymmetric' AND codebook IS NULL THEN
		RAISE EXCEPTION 'asymmetric scoring needs a codebook with reconstruction levels'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF scoring = 'hamming' AND codebook IS NOT NULL AND to_regclass('bitpress.codebooks') IS NOT NULL THEN
		-- flag 16 of the stored form (u16 little-endian at byte 6): a RaBitQ codebook
		EXECUTE 'SELECT coalesce(bool_or(length(params) >= 8 AND get_byte(params, 6) & 16 <> 0), false) '
			'FROM bitpress.codebooks WHERE name = $1' INTO rabitq USING codebook;
		IF rabitq THEN
			RAISE EXCEPTION 'codebook "%" is a RaBitQ codebook: rank its codes with scoring => ''asymmetric''', codebook
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Its codes end in float correction factors, so a Hamming distance between them means nothing.';
		END IF;
	END IF;
	RETURN scoring = 'asymmetric';
END $$;

COMMENT ON FUNCTION bitpress_check_scoring(text, text) IS
	'internal: checks the scoring argument of the k-NN functions (Hamming is refused under a RaBitQ codebook); true for asymmetric';

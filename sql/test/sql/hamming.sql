SELECT hamming(B'1011', B'0110');
SELECT hamming(B'', B'');
SELECT hamming(binarize('[1,-1,1,-1]'::vector), binarize('[1,1,-1,-1]'::vector));
-- the same number pgvector's <~> gives
SELECT binarize('[1,-1,1,-1]'::vector) <~> binarize('[1,1,-1,-1]'::vector);
SELECT hamming(B'1', NULL) IS NULL;

-- every kernel path this CPU has gives the same distances
LOAD 'bitpress';
SET bitpress.simd = 'scalar';
SELECT bitpress_simd(), hamming(repeat('10', 500)::varbit, repeat('01', 500)::varbit);
SET bitpress.simd = 'auto';
SELECT bitpress_simd() = ANY(bitpress_simd_supported());
SELECT hamming(repeat('10', 500)::varbit, repeat('01', 500)::varbit);
SET bitpress.simd = 'sse9';

-- bad input
SELECT hamming(B'101', B'10');

-- sign at zero, bit for bit like pgvector's binary_quantize
SELECT binarize('[1,-2,3,0,-0.5,0.25,7,-7,1]'::vector);
SELECT binarize('[1,-2,3,0,-0.5,0.25,7,-7,1]'::vector)::bit(9) = binary_quantize('[1,-2,3,0,-0.5,0.25,7,-7,1]'::vector);
SELECT binarize('{1,-2,3}'::real[]);
SELECT binarize(ARRAY[1,-2,3]);

-- per-dimension thresholds: bit i = v[i] > t[i]
SELECT binarize('[1,2,3,4]'::vector, '{0,2,2.5,5}'::real[]);
SELECT binarize('{1,2,3,4}'::real[], '{1,1,1,1}'::real[]);

-- a code is a bit(n) value: length, text form, bytes
SELECT length(binarize('{1,1,1,1,1,1,1,1,1,1}'::real[]));
SELECT code_bytes(binarize('{1,-1,1,-1,1,-1,1,-1,1,1}'::real[]));
SELECT code_from_bytes('\xaac0'::bytea, 10);

-- NULL in, NULL out
SELECT binarize(NULL::vector) IS NULL, binarize('{1}'::real[], NULL) IS NULL;

-- bad input
SELECT binarize('{1,NaN}'::real[]);
SELECT binarize('{Infinity}'::real[]);
SELECT binarize('[1,2]'::vector, '{0,NaN}'::real[]);
SELECT binarize('[1,2,3]'::vector, '{0,0}'::real[]);
SELECT binarize('{}'::real[]);
SELECT binarize('{{1,2},{3,4}}'::real[]);
SELECT binarize('{1,NULL}'::real[]);
SELECT binarize(array_fill(1::real, ARRAY[65537]));
SELECT code_from_bytes('\x01'::bytea, 3);
SELECT code_from_bytes('\x0102'::bytea, 3);

"""bitpress in a real PostgreSQL 15 server: values against numpy and pgvector, errors with
their SQLSTATEs, the server alive after each, kernel paths, catalog properties."""
import numpy as np
import psycopg
import pytest
from pgvector import Vector

import bitpress
from bitpress import schema
from conftest import copy_vectors


def codes_from_pg(pg, sql, params=()):
    rows = pg.execute(sql, params).fetchall()
    return np.array([np.frombuffer(r[0], dtype=np.uint8) for r in rows])


def test_binarize_vector_equals_numpy_and_pgvector(pg, openai_small):
    copy_vectors(pg, "items", openai_small)
    got = codes_from_pg(pg, "SELECT code_bytes(binarize(v)) FROM items ORDER BY id")
    assert np.array_equal(got, np.packbits(openai_small > 0, axis=1))
    same = pg.execute("SELECT bool_and(binarize(v)::bit(1536) = binary_quantize(v)) "
                      "FROM items").fetchone()[0]
    assert same is True


def test_binarize_real_array_with_thresholds(pg, minilm):
    x = minilm[:300]
    t = np.median(x, axis=0)
    pg.execute("CREATE TABLE a (id int, v real[])")
    with pg.cursor().copy("COPY a (id, v) FROM STDIN") as copy:
        for i, v in enumerate(x):
            copy.write_row([i, v.tolist()])
    got = codes_from_pg(pg, "SELECT code_bytes(binarize(v, %s::real[])) FROM a ORDER BY id", [t.tolist()])
    assert np.array_equal(got, np.packbits(x > t, axis=1))
    assert np.array_equal(got, bitpress.binarize(x, t))


def test_bit_layout_matches_bit_n(pg):
    # 10 dimensions: two bytes, six zero padding bits, MSB first like PostgreSQL's own bit(n)
    code, text, nbits = pg.execute(
        "SELECT code_bytes(c), c::text, length(c) FROM "
        "(SELECT binarize('{1,-1,2,0,-0.5,3,3,-3,0.1,-0.1}'::real[]) AS c) s").fetchone()
    assert text == "1010011010"
    assert nbits == 10
    assert bytes(code) == bytes([0b10100110, 0b10000000])


def test_sign_at_zero_matches_pgvector_on_edge_values(pg):
    v = Vector([0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 1.0, -1.0, 0.0])
    ours, theirs = pg.execute("SELECT binarize(%s::vector)::text, binary_quantize(%s::vector)::text",
                              [v, v]).fetchone()
    assert ours == theirs == "001010100"


def test_binarize_halfvec_and_sparsevec_equal_pgvector_and_the_dense_vector(pg, minilm):
    """halfvec: the bits of pgvector's binary_quantize(halfvec) and of the vector it rounds to;
    sparsevec: those of the dense vector (absent entries are 0), with thresholds and codebooks."""
    from bitpress import codebooks
    from bitpress.codebook import Codebook

    x = minilm[:200].copy()
    x[:, ::3] = 0  # a third of the entries absent from the sparsevecs
    pg.execute("CREATE TABLE h (id int, v vector(384))")
    with pg.cursor().copy("COPY h (id, v) FROM STDIN") as copy:
        for i, v in enumerate(x):
            copy.write_row([i, "[" + ",".join(map(repr, v.tolist())) + "]"])
    same = pg.execute("SELECT bool_and(binarize(v::halfvec) = binary_quantize(v::halfvec)::varbit AND "
                      "binarize(v::halfvec) = binarize(v::halfvec::vector) AND "
                      "binarize(v::sparsevec) = binarize(v)) FROM h").fetchone()[0]
    assert same is True
    t = np.median(x, axis=0).tolist()
    got = codes_from_pg(pg, "SELECT code_bytes(binarize(v::sparsevec, %s::real[])) FROM h ORDER BY id", [t])
    assert np.array_equal(got, np.packbits(x > np.float32(t), axis=1))
    schema.upgrade(pg)
    codebooks.save(pg, "m", Codebook("median", 384, src_a=list(range(384)), thr_a=t))
    same = pg.execute("SELECT bool_and(binarize(v::sparsevec, 'm') = binarize(v, 'm') AND "
                      "binarize(v::sparsevec, 'm', 1) = binarize(v, 'm') AND "
                      "binarize(v::halfvec, 'm') = binarize(v::halfvec::vector, 'm')) FROM h").fetchone()[0]
    assert same is True
    for bad, state in [("'{1:1}/70000'::sparsevec", "54000")]:  # more than bitpress's MAX_DIM
        with pytest.raises(psycopg.Error) as ei:
            pg.execute(f"SELECT binarize({bad})").fetchall()
        assert ei.value.sqlstate == state


def test_hamming_equals_pgvector_and_numpy(pg, openai_large):
    x = openai_large
    copy_vectors(pg, "items", x)
    rows = pg.execute(
        "SELECT a.id, b.id, hamming(binarize(a.v), binarize(b.v)), "
        "binarize(a.v) <~> binarize(b.v) FROM items a, items b").fetchall()
    codes = np.packbits(x > 0, axis=1)
    assert len(rows) == len(x) ** 2
    for i, j, ours, pgv in rows:
        ref = int(np.bitwise_count(codes[i] ^ codes[j]).sum())
        assert ours == ref
        assert pgv == float(ref)


def test_hnsw_bit_hamming_ops_on_our_codes(pg, minilm):
    copy_vectors(pg, "docs", minilm)
    pg.execute("ALTER TABLE docs ADD COLUMN code bit(384)")
    t = np.median(minilm, axis=0).tolist()
    pg.execute("UPDATE docs SET code = binarize(v, %s::real[])", [t])
    pg.execute("CREATE INDEX ON docs USING hnsw (code bit_hamming_ops)")
    q = minilm[7]
    plan = "\n".join(r[0] for r in pg.execute(
        "EXPLAIN SELECT id FROM docs ORDER BY code <~> binarize(%s::vector, %s::real[]) LIMIT 10",
        [Vector(q), t]).fetchall())
    assert "docs_code_idx" in plan
    pg.execute("SET hnsw.ef_search = 200")
    ids = [r[0] for r in pg.execute(
        "SELECT id FROM docs ORDER BY code <~> binarize(%s::vector, %s::real[]) LIMIT 10",
        [Vector(q), t]).fetchall()]
    assert ids[0] == 7
    exact = bitpress.hamming(bitpress.binarize(minilm, t), bitpress.binarize(q, t))
    got = exact[ids]
    assert np.array_equal(np.sort(got), np.sort(exact)[:10])  # HNSW found an exact top-10 here


@pytest.mark.parametrize("path", ["scalar", "popcnt", "avx2", "avx512"])
def test_every_kernel_path_gives_the_same_distances(pg, minilm, path):
    supported = pg.execute("SELECT bitpress_simd_supported()").fetchone()[0]
    if path not in supported:
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            pg.execute(f"SET bitpress.simd = '{path}'")
        pytest.skip(f"this CPU cannot run the {path} path (supported: {supported})")
    pg.execute(f"SET bitpress.simd = '{path}'")
    assert pg.execute("SELECT bitpress_simd()").fetchone()[0] == path
    x = minilm[:64]
    arr = [v.tolist() for v in x]
    pg.execute("CREATE TABLE c (id int, v real[])")
    with pg.cursor().copy("COPY c (id, v) FROM STDIN") as copy:
        for i, v in enumerate(arr):
            copy.write_row([i, v])
    got = pg.execute("SELECT a.id, b.id, hamming(binarize(a.v), binarize(b.v)) FROM c a, c b "
                     "ORDER BY a.id, b.id").fetchall()
    codes = np.packbits(x > 0, axis=1)
    ref = np.bitwise_count(codes[:, None, :] ^ codes[None, :, :]).sum(-1)
    assert [r[2] for r in got] == ref.ravel().tolist()


def test_simd_setting_rejects_unknown_path(pg):
    # the setting is checked once bitpress.so is loaded (before that, SET makes a placeholder)
    pg.execute("LOAD 'bitpress'")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="bitpress.simd"):
        pg.execute("SET bitpress.simd = 'sse9'")
    assert pg.execute("SELECT 1").fetchone()[0] == 1


def test_code_bytes_round_trip(pg):
    assert pg.execute("SELECT code_from_bytes(code_bytes(B'1011001110'), 10)::text").fetchone()[0] == "1011001110"
    assert pg.execute("SELECT code_from_bytes('\\xb3'::bytea, 8)::text").fetchone()[0] == "10110011"


def test_strict_nulls(pg):
    assert pg.execute("SELECT binarize(NULL::vector), binarize(NULL::real[], '{1}'), hamming(B'1', NULL)"
                      ).fetchone() == (None, None, None)


BAD_INPUT = [
    ("SELECT binarize('{1,NaN,3}'::real[])", psycopg.errors.FloatingPointException,
     "NaN or infinity not allowed in vector (element 2)"),
    ("SELECT binarize('{1,Infinity}'::real[])", psycopg.errors.FloatingPointException,
     "NaN or infinity not allowed in vector (element 2)"),
    ("SELECT binarize('{-Infinity}'::real[])", psycopg.errors.FloatingPointException,
     "NaN or infinity not allowed in vector (element 1)"),
    ("SELECT binarize('[1,2,3]'::vector, '{0,NaN,0}'::real[])", psycopg.errors.FloatingPointException,
     "NaN or infinity not allowed in thresholds (element 2)"),
    ("SELECT binarize('[1,2,3]'::vector, '{0,0}'::real[])", psycopg.errors.DataException,
     "vector has 3 dimensions but thresholds have 2"),
    ("SELECT binarize('{1,2}'::real[], '{0,0,0}'::real[])", psycopg.errors.DataException,
     "vector has 2 dimensions but thresholds have 3"),
    ("SELECT binarize('{}'::real[])", psycopg.errors.ArraySubscriptError,
     "vector must have at least 1 dimension"),
    ("SELECT binarize('{{1,2},{3,4}}'::real[])", psycopg.errors.ArraySubscriptError,
     "vector must be a one-dimensional array, not 2-dimensional"),
    ("SELECT binarize('{1,NULL}'::real[])", psycopg.errors.NullValueNotAllowed,
     "vector must not contain nulls"),
    ("SELECT binarize('{1,2}'::real[], '{NULL,1}'::real[])", psycopg.errors.NullValueNotAllowed,
     "thresholds must not contain nulls"),
    ("SELECT binarize(array_fill(1::real, ARRAY[65537]))", psycopg.errors.ProgramLimitExceeded,
     "vector cannot have more than 65536 dimensions, got 65537"),
    ("SELECT hamming(B'101', B'10')", psycopg.errors.DataException, "different bit lengths 3 and 2"),
    ("SELECT code_from_bytes('\\x01'::bytea, 3)", psycopg.errors.DataException,
     "padding bits after bit 3 are not zero"),
    ("SELECT code_from_bytes('\\x0102'::bytea, 3)", psycopg.errors.DataException,
     "2 bytes cannot hold a code of 3 bits"),
    ("SELECT code_from_bytes('\\x01'::bytea, -1)", psycopg.errors.InvalidParameterValue,
     "bit length must not be negative, got -1"),
    ("SELECT code_from_bytes('\\x01'::bytea, 0)", psycopg.errors.DataException,
     "1 bytes cannot hold a code of 0 bits"),
]


@pytest.mark.parametrize("sql,error,message", BAD_INPUT, ids=[b[2][:40] for b in BAD_INPUT])
def test_bad_input_errors_and_server_survives(pg, sql, error, message):
    with pytest.raises(error) as exc:
        pg.execute(sql)
    assert exc.value.diag.message_primary == message
    assert pg.execute("SELECT 1").fetchone()[0] == 1
    assert pg.execute("SELECT hamming(binarize('{1,-1}'::real[]), B'01')").fetchone()[0] == 2


def test_error_sqlstates_match_python(pg):
    with pytest.raises(psycopg.errors.FloatingPointException) as pg_exc:
        pg.execute("SELECT binarize('{NaN}'::real[])")
    with pytest.raises(bitpress.errors.NonFiniteError) as py_exc:
        bitpress.binarize(np.array([np.nan], dtype=np.float32))
    assert pg_exc.value.sqlstate == py_exc.value.sqlstate == "22P01"
    assert str(py_exc.value) == pg_exc.value.diag.message_primary


# signature -> (volatility, strict, parallel): IMMUTABLE where the result depends on the
# arguments alone, STABLE where it reads bitpress.codebooks or runs a query
CATALOG = {
    "binarize(vector)": ("i", True, "s"),
    "binarize(vector,real[])": ("i", True, "s"),
    "binarize(real[])": ("i", True, "s"),
    "binarize(real[],real[])": ("i", True, "s"),
    "hamming(bit varying,bit varying)": ("i", True, "s"),
    "code_bytes(bit varying)": ("i", True, "s"),
    "code_from_bytes(bytea,integer)": ("i", True, "s"),
    "bitpress_simd()": ("s", True, "s"),
    "bitpress_simd_supported()": ("s", True, "s"),
    "binarize(vector,text)": ("s", True, "s"),
    "binarize(vector,text,integer)": ("s", True, "s"),
    "binarize(real[],text)": ("s", True, "s"),
    "binarize(real[],text,integer)": ("s", True, "s"),
    "bitpress_score(bit varying,vector,text)": ("s", True, "s"),
    "bitpress_score(bit varying,vector,text,integer)": ("s", True, "s"),
    # k-NN helpers and functions raise on NULL arguments instead of returning nothing
    "bitpress_check_knn(integer,integer)": ("i", False, "s"),
    "bitpress_relation(anyelement)": ("s", False, "s"),
    "bitpress_check_scoring(text,text)": ("s", False, "s"),  # 0.7.0: reads bitpress.codebooks (RaBitQ refusal)
    "bitpress_store_for(regclass,text)": ("s", False, "s"),
    "bitpress_store_knn(text,bit varying,integer)": ("s", True, "s"),
    "bitpress_store_rebuild(text)": ("v", False, "u"),
    "bitpress_store_track()": ("v", False, "u"),
    "bitpress_store_create(text,regclass,text,text,integer)": ("v", False, "u"),
    "bitpress_store_drop(text)": ("v", False, "u"),
    "bitpress_segment_knn(integer,bytea,bytea,bit varying,integer,bigint[])": ("i", True, "s"),
    "bitpress_store_knn_parallel(text,bit varying,integer)": ("s", True, "s"),
    # the parallel top-k aggregate: non-strict transition/combine (they start the state)
    "bitpress_segments_knn(integer,bytea,bytea,bit varying,integer,bigint[])": ("i", False, "s"),
    "bitpress_segments_knn_step(internal,integer,bytea,bytea,bit varying,integer,bigint[])": ("i", False, "s"),
    "bitpress_segments_knn_step(internal,integer,bytea,bytea,bit varying,integer,bigint[],bigint)": ("i", False, "s"),
    "bitpress_segment_checksum(bytea,bytea)": ("i", True, "s"),
    "bitpress_segments_knn(integer,bytea,bytea,bit varying,integer,bigint[],bigint)": ("i", False, "s"),
    "bitpress_store_check_source(regclass,text,text)": ("s", False, "s"),
    "bitpress_store_readable(text,regclass,text,text,boolean)": ("s", True, "s"),
    **{f"binarize({t}{args}": (vol, True, "s") for t in ("halfvec", "sparsevec")
       for args, vol in ((")", "i"), (",real[])", "i"), (",text)", "s"), (",text,integer)", "s"))},
    "bitpress_store_catalog()": ("s", False, "s"),
    "bitpress_store_check_segments(text,bigint,bigint)": ("i", False, "s"),
    "bitpress_segments_knn_combine(internal,internal)": ("i", False, "s"),
    "bitpress_segments_knn_serial(internal)": ("i", True, "s"),
    "bitpress_segments_knn_deserial(bytea,internal)": ("i", True, "s"),
    "bitpress_segments_knn_final(internal)": ("i", False, "s"),
    "bitpress_knn(anyelement,text,text,vector,integer,integer,text,text,text)": ("s", False, "r"),
    "bitpress_knn_codes(anyelement,text,vector,integer,integer,text,text)": ("s", False, "r"),
    "tt_reconstruct(text,text)": ("s", True, "s"),
    "tt_reconstruct_row(text,text,integer)": ("s", True, "s"),
    "tt_element(text,text,integer,integer)": ("s", True, "s"),
    "tt_matvec(text,text,vector)": ("s", True, "s"),
    "tt_matvec(text,text,real[])": ("s", True, "s"),
    "tt_vector(text,text)": ("s", True, "s"),
    "tt_reconstruct_row_vector(text,text,integer)": ("s", True, "s"),
    "ffn(vector,text)": ("s", True, "s"),
    "ffn(real[],text)": ("s", True, "s"),
    "sparse_ffn(vector,text,integer)": ("s", True, "s"),
    "sparse_ffn(real[],text,integer)": ("s", True, "s"),
    "sparse_ffn(vector,text)": ("s", True, "s"),
    "sparse_ffn(vector,text,integer,text)": ("s", True, "s"),
    "sparse_ffn(real[],text,integer,text)": ("s", True, "s"),
    "sparse_ffn(real[],text)": ("s", True, "s"),
    # bitpress_ivf: the access method's handler (as PostgreSQL's own) and the operator classes'
    # support functions (a constant: the metric)
    "bitpress_ivf_handler(internal)": ("v", False, "u"),
    "bitpress_ivf_l2(internal)": ("i", True, "s"),
    "bitpress_ivf_ip(internal)": ("i", True, "s"),
    "bitpress_ivf_cosine(internal)": ("i", True, "s"),
}


def test_catalog_properties(pg):
    rows = pg.execute("""
        SELECT p.oid::regprocedure::text, p.provolatile, p.proisstrict, p.proparallel,
               obj_description(p.oid, 'pg_proc')
        FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
        JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'bitpress'""").fetchall()
    got = {r[0]: tuple(r[1:4]) for r in rows}
    assert got == CATALOG
    for sig, *_, comment in rows:
        assert comment, f"{sig} has no COMMENT"


def test_upgrade_from_0_1_0_gives_the_same_functions(pg):
    def catalog():
        return sorted(pg.execute("""
            SELECT p.oid::regprocedure::text, p.provolatile, p.proisstrict, p.proparallel,
                   obj_description(p.oid, 'pg_proc'), p.prosrc
            FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
            JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'bitpress'""").fetchall())
    fresh = catalog()
    pg.execute("DROP EXTENSION bitpress")
    pg.execute("CREATE EXTENSION bitpress VERSION '0.1.0'")
    assert len(catalog()) == 9
    pg.execute("ALTER EXTENSION bitpress UPDATE")
    assert pg.execute("SELECT extversion FROM pg_extension WHERE extname = 'bitpress'").fetchone()[0] == bitpress.__version__
    assert catalog() == fresh


def test_extension_version_matches_package(pg):
    assert pg.execute("SELECT extversion FROM pg_extension WHERE extname = 'bitpress'").fetchone()[0] \
        == bitpress.__version__

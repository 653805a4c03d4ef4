"""Stored codebooks: one migration for both engines, binarize(v, 'name') giving the same bytes
in PostgreSQL, DuckDB and numpy, versions, cache invalidation, asymmetric scores, bad input."""
import numpy as np
import psycopg
import pytest

from bitpress import codebooks, errors, kernels, schema
from bitpress.codebook import Codebook
from conftest import copy_vectors


def median_book(x, levels=True):
    t = np.median(x, axis=0)
    lo = np.array([x[x[:, j] <= t[j], j].mean() for j in range(x.shape[1])])
    hi = np.array([x[x[:, j] > t[j], j].mean() for j in range(x.shape[1])])
    return Codebook("median", x.shape[1], src_a=np.arange(x.shape[1]), thr_a=t,
                    base=lo if levels else None, delta=(hi - lo) if levels else None)


def projected_book(x, bits=64, seed=0):
    """Centre, random orthonormal projection, two cut points per component (thermometer-like)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((x.shape[1], bits // 2)))
    c = x.mean(axis=0)
    z = (x - c) @ q
    s = z.std(axis=0)
    return Codebook("proj", x.shape[1], src_a=np.repeat(np.arange(bits // 2), 2),
                    thr_a=np.ravel(np.c_[-0.67 * s, 0.67 * s]), center=c, projection=q.T,
                    base=-s, delta=np.repeat(s, 2))


def pair_book(x):
    d = x.shape[1]
    lead = d // 2
    src_b = np.r_[np.full(lead, -1), np.arange(lead + d // 4, d)]
    return Codebook("hybrid", d, src_a=np.r_[np.arange(lead), np.arange(lead, lead + d // 4)],
                    thr_a=np.zeros(lead + d // 4), src_b=src_b, thr_b=np.full(lead + d // 4, 0.02))


def pg_codes(pg, sql, *args):
    return np.stack([np.frombuffer(r[0], np.uint8) for r in pg.execute(sql, args).fetchall()])


def duck_codes(con, sql, *args):
    """The codes (BIT) of a query's first column, as PostgreSQL's bytes (code_bytes)."""
    rows = con.execute(f"SELECT code_bytes(c) FROM ({sql}) q(c)", list(args)).fetchall()
    return np.stack([np.frombuffer(r[0], np.uint8) for r in rows])


def test_one_migration_makes_the_same_table_in_both_engines(pg, duck):
    assert schema.current(pg) is None and schema.current(duck) is None
    assert schema.upgrade(pg) == schema.upgrade(duck) == schema.head() == "0010_duckdb_ivf"
    assert schema.upgrade(pg) == "0010_duckdb_ivf"  # idempotent
    cols = "SELECT column_name, is_nullable FROM information_schema.columns " \
           "WHERE table_schema = 'bitpress' AND table_name = 'codebooks' ORDER BY ordinal_position"
    assert pg.execute(cols).fetchall() == duck.execute(cols).fetchall()
    assert [c for c, _ in pg.execute(cols).fetchall()] == [
        "name", "version", "method", "dims", "bits", "params", "options", "sample_size", "created_at", "checksum"]
    # bitpress's Alembic history stays out of the application's public.alembic_version
    assert pg.execute("SELECT to_regclass('public.alembic_version')").fetchone()[0] is None
    assert pg.execute("SELECT version_num FROM bitpress.alembic_version").fetchone()[0] == "0010_duckdb_ivf"
    tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'bitpress' ORDER BY 1"
    assert pg.execute(tables).fetchall() == [
        ("alembic_version",), ("code_columns",), ("code_delta",), ("code_segments",), ("code_stores",),
        ("codebooks",), ("etl_jobs",), ("ffn_layers",), ("tt_cores",), ("tt_models",), ("tt_tensors",)]
    # DuckDB alone has the IVF index tables (revision 0010; PostgreSQL's index is bitpress_ivf)
    assert duck.execute(tables).fetchall() == sorted(pg.execute(tables).fetchall()
                                                     + [("ivf_indexes",), ("ivf_lists",)])
    for table in ("tt_models", "tt_tensors", "tt_cores", "ffn_layers", "code_columns", "etl_jobs", "code_stores"):  # the same columns in both engines
        q = cols.replace("'codebooks'", f"'{table}'")
        assert pg.execute(q).fetchall() == duck.execute(q).fetchall()
    assert schema.downgrade(duck, "base") is None
    assert duck.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'codebooks'").fetchone()[0] == 0


@pytest.mark.parametrize("make", [median_book, projected_book, pair_book])
def test_stored_codebook_gives_identical_codes_everywhere(pg_books, duck_books, minilm, make):
    cb = make(minilm)
    assert codebooks.save(pg_books, "docs", cb, sample_size=len(minilm)) == 1
    assert codebooks.save(duck_books, "docs", cb, sample_size=len(minilm)) == 1
    want = kernels.encode(cb, minilm)
    ref = cb.encode_reference(minilm)
    # the core matches the numpy statement of the rules (projections: up to rounding ties)
    assert (np.unpackbits(want ^ ref).sum()) <= (0 if cb.projection is None else 2)
    copy_vectors(pg_books, "items", minilm)
    got_pg = pg_codes(pg_books, "SELECT code_bytes(binarize(v, 'docs')) FROM items ORDER BY id")
    got_pg_arr = pg_codes(pg_books, "SELECT code_bytes(binarize(v::real[], 'docs', 1)) FROM items ORDER BY id")
    duck_books.execute("CREATE TABLE items AS SELECT unnest(range(?)) AS id, unnest(?) AS v",
                       [len(minilm), minilm.tolist()])
    got_duck = duck_codes(duck_books, "SELECT binarize(v, 'docs') FROM items ORDER BY id")
    got_duck_v = duck_codes(duck_books, "SELECT binarize(v, 'docs', 1) FROM items ORDER BY id")
    for got in (got_pg, got_pg_arr, got_duck, got_duck_v):
        assert np.array_equal(got, want)
    assert pg_books.execute("SELECT length(binarize(v, 'docs')) FROM items LIMIT 1").fetchone()[0] == cb.bits
    assert duck_books.execute("SELECT DISTINCT bit_length(binarize(v, 'docs')) FROM items").fetchall() == [(cb.bits,)]


def test_save_and_load_round_trip_in_both_engines(pg_books, duck_books, minilm):
    cb = projected_book(minilm)
    cb.options = {"method_detail": "test", "sample": 2000}
    for conn in (pg_books, duck_books):
        codebooks.save(conn, "p", cb, 2000)
        back = codebooks.load(conn, "p")
        assert back.to_bytes() == cb.to_bytes()
        assert back.options["version"] == 1 and back.options["method_detail"] == "test"
        listed = codebooks.list_codebooks(conn)
        assert [(r["name"], r["version"], r["method"], r["dims"], r["bits"], r["sample_size"]) for r in listed] \
            == [("p", 1, "proj", 384, 64, 2000)]


def test_refit_adds_a_version_and_the_next_statement_sees_it(pg_books, postgresql_proc, minilm):
    pg = pg_books
    copy_vectors(pg, "items", minilm[:50])
    v1 = median_book(minilm[:1000])
    v2 = median_book(minilm[1000:] * -1.0)  # very different thresholds
    codebooks.save(pg, "docs", v1)
    assert np.array_equal(pg_codes(pg, "SELECT code_bytes(binarize(v, 'docs')) FROM items ORDER BY id"),
                          kernels.encode(v1, minilm[:50]))
    # another session refits; this session's cache must notice on its next statement
    p = postgresql_proc
    with psycopg.connect(host=p.host, port=p.port, user=p.user, dbname=pg.info.dbname, autocommit=True) as other:
        assert codebooks.save(other, "docs", v2) == 2
    assert np.array_equal(pg_codes(pg, "SELECT code_bytes(binarize(v, 'docs')) FROM items ORDER BY id"),
                          kernels.encode(v2, minilm[:50]))
    assert np.array_equal(pg_codes(pg, "SELECT code_bytes(binarize(v, 'docs', 1)) FROM items ORDER BY id"),
                          kernels.encode(v1, minilm[:50]))
    # a row rewritten in place is noticed too (xmin changes)
    pg.execute("UPDATE bitpress.codebooks SET params = %s, checksum = encode(sha256(%s), 'hex') "
               "WHERE name = 'docs' AND version = 2", (v1.to_bytes(), v1.to_bytes()))
    assert np.array_equal(pg_codes(pg, "SELECT code_bytes(binarize(v, 'docs')) FROM items ORDER BY id"),
                          kernels.encode(v1, minilm[:50]))


def test_duckdb_sees_a_refit_on_the_next_query(duck_books, minilm):
    con = duck_books
    con.execute("CREATE TABLE items AS SELECT unnest(?) AS v", [minilm[:20].tolist()])
    v1, v2 = median_book(minilm[:1000]), median_book(-minilm[1000:])
    codebooks.save(con, "docs", v1)
    assert np.array_equal(duck_codes(con, "SELECT binarize(v, 'docs') FROM items"), kernels.encode(v1, minilm[:20]))
    codebooks.save(con, "docs", v2)
    assert np.array_equal(duck_codes(con, "SELECT binarize(v, 'docs') FROM items"), kernels.encode(v2, minilm[:20]))
    assert np.array_equal(duck_codes(con, "SELECT binarize(v, 'docs', 1) FROM items"), kernels.encode(v1, minilm[:20]))


def test_asymmetric_score_is_the_same_in_both_engines(pg_books, duck_books, minilm):
    cb = projected_book(minilm)
    codes = kernels.encode(cb, minilm[:100])
    q = minilm[1500]
    want = kernels.asymmetric_scores(cb, q, codes)
    # the score is q . x_hat, the reconstruction of each code
    assert np.allclose(want, cb.reconstruct_reference(codes) @ q, atol=1e-4)
    codebooks.save(pg_books, "p", cb)
    codebooks.save(duck_books, "p", cb)
    copy_vectors(pg_books, "items", minilm[:100])
    got_pg = [r[0] for r in pg_books.execute(
        "SELECT bitpress_score(binarize(v, 'p'), %s, 'p') FROM items ORDER BY id", (q,)).fetchall()]
    duck_books.execute("CREATE TABLE items AS SELECT unnest(range(100)) AS id, unnest(?) AS v", [minilm[:100].tolist()])
    got_duck = [r[0] for r in duck_books.execute(
        "SELECT bitpress_score(binarize(v, 'p'), ?::FLOAT[], 'p') FROM items ORDER BY id", [q.tolist()]).fetchall()]
    assert np.array_equal(np.asarray(got_pg), want)
    assert np.array_equal(np.asarray(got_duck), want)


PG_BAD = [
    ("SELECT binarize('[1,2,3]'::vector, 'nope')", "42704", 'codebook "nope" does not exist'),
    ("SELECT binarize('[1,2,3]'::vector, 'docs', 7)", "42704", 'codebook "docs" version 7 does not exist'),
    ("SELECT binarize('[1,2,3]'::vector, 'docs')", "22000", "vector has 3 dimensions but the codebook expects 384"),
    ("SELECT binarize('{1,NaN}'::real[], 'two')", "22P01", "NaN or infinity not allowed in vector (element 2)"),
    ("SELECT binarize('[1,2]'::vector, 'broken')", "22P03", "malformed codebook: length does not match"),
    ("SELECT bitpress_score(B'101', '[1,2]', 'two')", "22000", "different bit lengths 3 and 2"),
    ("SELECT bitpress_score(B'10', '[1,2]', 'pairs')", "22023", "no reconstruction levels"),
]


@pytest.mark.parametrize("sql,state,message", PG_BAD)
def test_postgresql_bad_input(pg_books, minilm, sql, state, message):
    codebooks.save(pg_books, "docs", median_book(minilm))
    codebooks.save(pg_books, "two", Codebook("median", 2, src_a=[0, 1], thr_a=[0, 0], base=[0, 0], delta=[1, 1]))
    codebooks.save(pg_books, "pairs", Codebook("hybrid", 2, src_a=[0, 0], thr_a=[0, 0], src_b=[-1, 1], thr_b=[0, 0]))
    good = Codebook("median", 2, src_a=[0, 1], thr_a=[0, 0]).to_bytes()
    pg_books.execute("INSERT INTO bitpress.codebooks (name, version, method, dims, bits, params, sample_size, "
                     "checksum) VALUES ('broken', 1, 'median', 2, 2, %s, 0, encode(sha256(%s), 'hex'))",
                     (good[:-4], good[:-4]))
    with pytest.raises(psycopg.Error) as e:
        pg_books.execute(sql)
    assert e.value.sqlstate == state
    assert message in str(e.value)
    assert pg_books.execute("SELECT 1").fetchone()[0] == 1


def test_postgresql_without_the_table_says_to_migrate(pg):
    with pytest.raises(psycopg.Error) as e:
        pg.execute("SELECT binarize('[1,2]'::vector, 'docs')")
    assert e.value.sqlstate == "42P01" and "bitpress migrate" in str(e.value)


def test_duckdb_bad_input(duck_books, minilm):
    import duckdb

    codebooks.save(duck_books, "docs", median_book(minilm))
    for sql, message in [
        ("SELECT binarize([1.0, 2, 3], 'nope')", 'codebook "nope" does not exist'),
        ("SELECT binarize([1.0, 2, 3], 'docs', 9)", 'codebook "docs" version 9 does not exist'),
        ("SELECT binarize([1.0, 2, 3], 'docs')", "vector has 3 dimensions but the codebook expects 384"),
    ]:
        with pytest.raises(duckdb.Error, match=message):
            duck_books.execute(sql).fetchall()
    with pytest.raises(errors.UnknownCodebookError):
        codebooks.load(duck_books, "nope")
    with pytest.raises(errors.MalformedCodebookError):
        Codebook.from_bytes(median_book(minilm).to_bytes()[:-1])
    with pytest.raises(errors.MalformedCodebookError):
        kernels.encode(b"BPCB" + bytes(30), minilm[:2])


@pytest.mark.parametrize("column", ["params", "version"])
@pytest.mark.parametrize("eng", ["pg", "duckdb"])
def test_a_null_in_the_codebook_table_is_corrupt_data(request, eng, column):
    """A NULL where bitpress's migration says NOT NULL (dropped by hand) is XX001 naming the
    table, the codebook and the column, in SQL and in Python (before: a segfault in PostgreSQL)."""
    from conftest import error_of

    conn = request.getfixturevalue("pg_books" if eng == "pg" else "duck_books")
    codebooks.save(conn, "two", Codebook("median", 2, src_a=[0, 1], thr_a=[0, 0]))
    if column == "version":  # part of the primary key: a copy of the table without it
        conn.execute("ALTER TABLE bitpress.codebooks RENAME TO codebooks_old")
        conn.execute("CREATE TABLE bitpress.codebooks AS SELECT * FROM bitpress.codebooks_old")
    conn.execute(f"ALTER TABLE bitpress.codebooks ALTER COLUMN {column} DROP NOT NULL")
    conn.execute(f"UPDATE bitpress.codebooks SET {column} = NULL")
    got, msg = error_of(conn, "SELECT binarize(" + ("'[1,2]'::vector" if eng == "pg" else "[1.0, 2.0]")
                        + ", 'two')")
    row = 'codebook "two"' + (" version 1" if column == "params" else "")
    assert got == "XX001" and f'bitpress.codebooks ({row}): column "{column}" is NULL' in msg, msg
    with pytest.raises(errors.CorruptDataError, match=f'column "{column}" is NULL'):
        codebooks.load(conn, "two")


@pytest.mark.parametrize("eng", ["pg", "duckdb"])
def test_a_score_past_float4_is_out_of_range(request, eng):
    """Scores are float sums of q * delta: one that leaves float4 is 22003, never Infinity."""
    from conftest import error_of

    conn = request.getfixturevalue("pg_books" if eng == "pg" else "duck_books")
    codebooks.save(conn, "two", Codebook("median", 2, src_a=[0, 1], thr_a=[0, 0], base=[0, 0], delta=[1, 1]))
    q = "'[3e38,3e38]'::vector" if eng == "pg" else "[3e38, 3e38]::FLOAT[]"
    code = "B'11'" if eng == "pg" else "binarize([1.0, 1.0]::FLOAT[], 'two')"
    got, msg = error_of(conn, f"SELECT bitpress_score({code}, {q}, 'two')")
    assert got == "22003" and "the computation overflows" in msg, msg
    half = "'[1e38,1e38]'::vector" if eng == "pg" else "[1e38, 1e38]::FLOAT[]"
    assert fetchall_one(conn, f"SELECT bitpress_score({code}, {half}, 'two')") == pytest.approx(2e38, rel=1e-6)


def fetchall_one(conn, q):
    from bitpress.tables import fetchall

    return fetchall(conn, q)[0][0]


@pytest.mark.parametrize("eng", ["pg", "duckdb"])
def test_stored_parameters_are_checked_against_their_checksum(request, eng):
    """Revision 0009 fills the checksum of codebooks and layers already stored; a byte flipped
    inside a threshold afterwards (still a finite value) is 22P03, a NULL checksum XX001, in SQL
    and in Python (before: a different code with no error)."""
    import struct

    from conftest import error_of

    from bitpress import ffn

    conn = request.getfixturevalue("pg" if eng == "pg" else "duck")
    schema.upgrade(conn, "0008_store_access")
    codebooks.save(conn, "two", Codebook("median", 2, src_a=[0, 1], thr_a=[0.5, 0.5]))
    w = np.eye(2, dtype=np.float32)
    ffn.save(conn, "l", ffn.Layer(w, np.zeros(2, np.float32), w, np.zeros(2, np.float32), "relu"))
    schema.upgrade(conn)
    x = "'[1,0.25]'::vector" if eng == "pg" else "[1.0, 0.25]::FLOAT[]"
    assert fetchall_one(conn, f"SELECT code_bytes(binarize({x}, 'two'))") == b"\x80"
    blob = bytearray(codebooks.load(conn, "two").to_bytes())
    at = bytes(blob).index(struct.pack("<ff", 0.5, 0.5))
    blob[at + 4:at + 8] = struct.pack("<f", 0.125)  # the second threshold: 0.25 > 0.125 now
    ph = "%s" if eng == "pg" else "?"
    conn.execute(f"UPDATE bitpress.codebooks SET params = {ph}", [bytes(blob)])
    got, msg = error_of(conn, f"SELECT binarize({x}, 'two')")
    assert got == "22P03" and 'codebook "two" version 1: its parameters do not match their stored checksum' in msg
    with pytest.raises(errors.MalformedCodebookError, match="do not match their stored checksum"):
        codebooks.load(conn, "two")
    conn.execute("UPDATE bitpress.ffn_layers SET checksum = NULL")
    got, msg = error_of(conn, f"SELECT ffn({x}, 'l')")
    assert got == "XX001" and 'bitpress.ffn_layers (layer "l"): column "checksum" is NULL' in msg, msg


def run_cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "bitpress", *args], capture_output=True, text=True)


def test_fit_command_samples_a_table_and_stores_a_codebook(pg, postgresql_proc, tmp_path, minilm):
    import bitpress.duckdb

    p = postgresql_proc
    pg_dsn = f"host={p.host} port={p.port} user={p.user} dbname={pg.info.dbname}"

    # PostgreSQL: a table with a pgvector column, in the session's default database
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        from pgvector.psycopg import register_vector
        register_vector(conn)
        conn.execute('DROP TABLE IF EXISTS "Fit Items"')
        conn.execute('CREATE TABLE "Fit Items" (id int, "Emb" vector(384))')
        with conn.cursor().copy('COPY "Fit Items" FROM STDIN WITH (FORMAT BINARY)') as cp:
            cp.set_types(["int4", "vector"])
            for i, v in enumerate(minilm):
                cp.write_row([i, v])
        r = run_cli("fit", "--dsn", pg_dsn, "--table", "Fit Items", "--vector-col", "Emb",
                    "--name", "fit_cli", "--method", "median", "--sample", "1500", "--quiet")
        assert r.returncode == 0, r.stderr
        assert "version 1: median, 384 dims -> 384 bits (48 bytes, 32x smaller" in r.stdout
        cb = codebooks.load(conn, "fit_cli")
        assert cb.options["version"] == 1
        n, = conn.execute("SELECT sample_size FROM bitpress.codebooks WHERE name = 'fit_cli'").fetchone()
        assert 1200 <= n <= 1500  # Bernoulli sample sized for 1500 rows, capped at 1500
        codes = [np.frombuffer(c, np.uint8) for c, in conn.execute(
            'SELECT code_bytes(binarize("Emb", \'fit_cli\')) FROM "Fit Items" ORDER BY id LIMIT 50').fetchall()]
        assert np.array_equal(np.stack(codes), kernels.encode(cb, minilm[:50]))
        # median thresholds of the sample: about half the bits set
        assert 0.45 < np.unpackbits(kernels.encode(cb, minilm)).mean() < 0.55
        conn.execute('DROP TABLE "Fit Items"')
        conn.execute("DELETE FROM bitpress.codebooks WHERE name = 'fit_cli'")

    # DuckDB file: the same command, reservoir sample of exactly --sample rows
    path = str(tmp_path / "fit.duckdb")
    con = bitpress.duckdb.connect(path)
    con.execute("CREATE TABLE items AS SELECT unnest(?) AS emb", [minilm.tolist()])
    con.close()
    assert run_cli("migrate", "--duckdb", path).stdout.startswith("bitpress schema: none -> 0010_duckdb_ivf")
    r = run_cli("fit", "--duckdb", path, "--table", "items", "--vector-col", "emb", "--name", "d",
                "--method", "itq", "--bits", "64", "--sample", "1000", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "itq, 384 dims -> 64 bits (8 bytes, 192x smaller" in r.stdout
    con = bitpress.duckdb.connect(path)
    assert con.execute("SELECT version, method, bits, sample_size FROM bitpress.codebooks").fetchall() == [(1, "itq", 64, 1000)]
    con.close()
    r = run_cli("fit", "--duckdb", path, "--table", "items", "--vector-col", "nope", "--name", "d", "--quiet")
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("fit", "--duckdb", path, "--table", "items", "--vector-col", "emb", "--name", "d",
                "--method", "itq", "--bits", "64", "--sample", "10", "--quiet")
    assert r.returncode == 2 and "bitpress:" in r.stderr  # too few rows for 64 components

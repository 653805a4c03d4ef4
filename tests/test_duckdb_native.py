"""The native DuckDB extension (bitpress.duckdb_extension, duckdb/src/ + the C core): built
here, loaded unsigned into the in-process DuckDB and into the real DuckDB CLI (duckdb-cli from
PyPI), and checked against the Python UDF implementation (bitpress.duckdb) and numpy on the
real MiniLM corpus: the same answers, byte for byte, the same error messages, NULL in NULL out.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import bitpress
import bitpress.duckdb
from bitpress import duckdb_native

from conftest import load_shared, run_cli


@pytest.fixture(scope="module")
def ext():
    return duckdb_native.build()


@pytest.fixture
def nat(ext):
    con = duckdb_native.connect()
    yield con
    con.close()


@pytest.fixture(scope="module")
def corpus():
    return load_shared("pypi-minilm", "corpus.npy")


@pytest.fixture(scope="module")
def queries():
    return load_shared("pypi-minilm", "queries.npy")


def sign_codes(x):
    """PostgreSQL's layout of sign codes (MSB first, zero padding at the end), numpy's way."""
    return np.packbits(x > 0, axis=1)


def popcount_distances(codes, q):
    return np.unpackbits(np.bitwise_xor(codes, q), axis=1).sum(axis=1)


def code_table(con, name, codes, nulls=()):
    rows = [None if i in nulls else c.tobytes() for i, c in enumerate(codes)]
    t = pa.table({"id": pa.array(np.arange(len(codes), dtype=np.int64)), "code": pa.array(rows, pa.binary())})
    con.register("_arrow_codes", t)
    con.execute(f"CREATE TABLE {name} AS SELECT * FROM _arrow_codes")
    con.unregister("_arrow_codes")


def vector_table(con, name, x):
    t = pa.table({"id": pa.array(np.arange(len(x), dtype=np.int64)),
                  "v": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), x.shape[1])})
    con.register("_arrow_vectors", t)
    con.execute(f"CREATE TABLE {name} AS SELECT id, CAST(v AS FLOAT[]) AS v FROM _arrow_vectors")
    con.unregister("_arrow_vectors")


def error_message(con, query):
    with pytest.raises(duckdb.Error) as ei:
        con.execute(query).fetchall()
    return str(ei.value)


# ---- the file ----

def test_build_writes_a_loadable_extension_with_duckdbs_footer(tmp_path, monkeypatch):
    monkeypatch.setenv("BITPRESS_CACHE", str(tmp_path))
    path = duckdb_native.build(force=True)
    assert path.name == "bitpress.duckdb_extension" and path.is_relative_to(tmp_path)
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF"
    tail = data[-534:]
    assert tail[:22] == b"\x00\x93\x04\x10duckdb_signature\x80\x04"
    fields = [tail[22 + 32 * i:22 + 32 * (i + 1)].rstrip(b"\0").decode() for i in range(8)]
    platform = duckdb.connect().execute("PRAGMA platform").fetchone()[0]
    assert fields == ["", "", "", "C_STRUCT", f"v{bitpress.__version__}", "v1.2.0", platform, "4"]
    assert tail[-256:] == b"\0" * 256  # unsigned
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"LOAD '{path}'")
    assert con.execute("SELECT bitpress_version()").fetchone() == (bitpress.__version__,)
    # the entry point is named after the file: a renamed copy does not load
    other = tmp_path / "other.duckdb_extension"
    shutil.copy(path, other)
    with pytest.raises(duckdb.Error, match="other_init_c_api"):
        duckdb.connect(config={"allow_unsigned_extensions": "true"}).execute(f"LOAD '{other}'")


def test_build_is_cached_and_the_cli_command_prints_it(ext):
    assert duckdb_native.build() == ext
    r = run_cli("duckdb-extension")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(ext)


def test_functions_missing_before_load_present_after(ext):
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    for fn in ("bitpress_hamming(''::BLOB, ''::BLOB)", "binarize([1]::FLOAT[])", "bitpress_simd()"):
        with pytest.raises(duckdb.CatalogException):
            con.execute(f"SELECT {fn}")
    con.execute(f"LOAD '{ext}'")
    assert con.execute("SELECT bitpress_hamming(''::BLOB, ''::BLOB), binarize([1]::FLOAT[]), bitpress_simd()"
                       ).fetchone() == (0, "1", bitpress.simd())


def test_the_docs_python_example():
    con = duckdb_native.connect()
    assert con.sql("SELECT hamming(binarize([0.3, -1.2, 2.0]::FLOAT[]), binarize([0.1, 0.4, 2.5]::FLOAT[]))"
                   ).fetchall() == [(1,)]
    con.execute("CREATE TABLE docs AS SELECT range AS id, from_hex(lpad(hex(range), 4, '0')) AS code FROM range(100)")
    q = bytes([0, 5])
    got = con.sql("SELECT id FROM docs ORDER BY hamming(code, from_hex(?)), id LIMIT 10", params=[q.hex()]).fetchall()
    want = sorted(range(100), key=lambda i: (bin(i ^ 5).count("1"), i))[:10]
    assert [r[0] for r in got] == want


def test_simd_and_version_are_the_cores(nat):
    assert nat.execute("SELECT bitpress_simd(), bitpress_version()").fetchone() == (bitpress.simd(),
                                                                                  bitpress.__version__)
    assert bitpress.simd() in bitpress.simd_supported()


def test_every_kernel_path_gives_the_same_distances(nat, corpus, queries):
    codes = sign_codes(corpus[:20000, :200])  # 25 bytes: the SIMD blocks and their tails
    code_table(nat, "t", codes)
    q = sign_codes(queries[:1, :200])[0]
    want = popcount_distances(codes, q)
    try:
        for path in bitpress.simd_supported():
            assert nat.execute("SELECT bitpress_set_simd(?)", [path]).fetchone() == (path,)
            assert nat.execute("SELECT bitpress_simd()").fetchone() == (path,)
            got = np.array(nat.execute("SELECT hamming(code, from_hex(?)) FROM t ORDER BY id", [q.tobytes().hex()])
                           .fetchall()).ravel()
            np.testing.assert_array_equal(got, want, err_msg=path)
    finally:
        assert nat.execute("SELECT bitpress_set_simd('auto')").fetchone() == (bitpress.simd(),)
    missing = sorted({"scalar", "popcnt", "avx2", "avx512"} - set(bitpress.simd_supported()))
    for path in missing + ["nope", "x" * 100]:
        assert error_message(nat, f"SELECT bitpress_set_simd('{path}')") == \
            "Invalid Input Error: kernel path not supported on this CPU or not compiled in"


def test_duckdbs_own_hamming_of_strings_still_works(nat):
    assert nat.execute("SELECT hamming('karolin', 'kathrin'), hamming('abc', 'abd')").fetchone() == (3, 1)


# ---- answers on real data ----

def test_hamming_blob_codes_match_numpy_and_the_udf(nat, duck, corpus, queries):
    codes = sign_codes(corpus)  # 50000 x 48 bytes
    qcodes = sign_codes(queries[:5])
    code_table(nat, "t", codes)
    code_table(duck, "t", codes)
    for q in qcodes:
        want = popcount_distances(codes, q)
        sql = "SELECT {fn}(code, ?) FROM t ORDER BY id"
        native = np.array(nat.execute(sql.format(fn="hamming"), [q.tobytes()]).fetchall()).ravel()
        prefixed = np.array(nat.execute(sql.format(fn="bitpress_hamming"), [q.tobytes()]).fetchall()).ravel()
        udf = np.array(duck.execute(sql.format(fn="hamming"), [q.tobytes()]).fetchall()).ravel()
        np.testing.assert_array_equal(native, want)
        np.testing.assert_array_equal(prefixed, want)
        np.testing.assert_array_equal(udf, want)
        # the benchmark's query: the same top-10 rows (ties broken by id) as exact search
        top = "SELECT id, hamming(code, ?) AS d FROM t ORDER BY d, id LIMIT 10"
        order = np.lexsort((np.arange(len(want)), want))[:10]
        assert nat.execute(top, [q.tobytes()]).fetchall() == [(int(i), int(want[i])) for i in order]
        assert duck.execute(top, [q.tobytes()]).fetchall() == [(int(i), int(want[i])) for i in order]


@pytest.mark.parametrize("dim", [384, 100])  # 100: 4 padding bits in the last byte
def test_binarize_gives_the_udfs_bits_byte_for_byte(nat, duck, corpus, dim):
    x = corpus[:3000, :dim]
    vector_table(nat, "v", x)
    vector_table(duck, "v", x)
    sql = "SELECT CAST({fn}(v) AS VARCHAR), bit_length({fn}(v)) FROM v ORDER BY id"
    native = nat.execute(sql.format(fn="binarize")).fetchall()
    assert nat.execute(sql.format(fn="bitpress_binarize")).fetchall() == native
    assert native == duck.execute(sql.format(fn="binarize")).fetchall()
    want = ["".join("1" if b else "0" for b in row) for row in x > 0]
    assert [s for s, _ in native] == want and {n for _, n in native} == {dim}
    # with thresholds (the corpus mean): the same again
    t = x.mean(axis=0).tolist()
    sql = "SELECT CAST(binarize(v, ?::FLOAT[]) AS VARCHAR) FROM v ORDER BY id"
    native = [r[0] for r in nat.execute(sql, [t]).fetchall()]
    assert native == [r[0] for r in duck.execute(sql, [t]).fetchall()]
    assert native == ["".join("1" if b else "0" for b in row) for row in x > np.float32(t)]
    # DOUBLE[] vectors are rounded to FLOAT first, as the UDFs' CAST does
    sql = "SELECT CAST(binarize(CAST(v AS DOUBLE[])) AS VARCHAR) FROM v ORDER BY id"
    assert [r[0] for r in nat.execute(sql).fetchall()] == want


@pytest.mark.parametrize("dim", [384, 100])
def test_hamming_of_bit_codes_and_mixed_bit_blob(nat, duck, corpus, queries, dim):
    x = corpus[:3000, :dim]
    q = queries[0, :dim].tolist()
    vector_table(nat, "v", x)
    vector_table(duck, "v", x)
    want = popcount_distances(sign_codes(x), sign_codes(queries[:1, :dim])[0])
    qblob = sign_codes(queries[:1, :dim])[0].tobytes()
    for sql, args in (("SELECT hamming(binarize(v), binarize(?::FLOAT[])) FROM v ORDER BY id", [q]),
                      ("SELECT hamming(binarize(v), ?::BLOB) FROM v ORDER BY id", [qblob]),
                      ("SELECT hamming(?::BLOB, binarize(v)) FROM v ORDER BY id", [qblob])):
        native = np.array(nat.execute(sql, args).fetchall()).ravel()
        np.testing.assert_array_equal(native, want)
        np.testing.assert_array_equal(np.array(duck.execute(sql, args).fetchall()).ravel(), want)
    # DuckDB's own popcount of the same BITs agrees
    sql = "SELECT bit_count(xor(binarize(v), binarize(?::FLOAT[]))) FROM v ORDER BY id"
    np.testing.assert_array_equal(np.array(nat.execute(sql, [q]).fetchall()).ravel(), want)


@pytest.mark.parametrize("dim", [384, 100])
def test_code_bytes_and_code_from_bytes_as_the_udfs(nat, duck, corpus, dim):
    x = corpus[:3000, :dim]
    vector_table(nat, "v", x)
    vector_table(duck, "v", x)
    want = sign_codes(x)
    sql = "SELECT code_bytes(binarize(v)) FROM v ORDER BY id"
    native = [r[0] for r in nat.execute(sql).fetchall()]
    assert native == [r[0] for r in duck.execute(sql).fetchall()] == [c.tobytes() for c in want]
    sql = "SELECT code_bytes(code_bytes(binarize(v))) FROM v ORDER BY id"  # a BLOB: itself
    assert [r[0] for r in nat.execute(sql).fetchall()] == native
    for arg in ("code_bytes(binarize(v))", "binarize(v)"):  # from a BLOB, and from a BIT's bytes
        sql = f"SELECT CAST(code_from_bytes({arg}, {dim}) AS VARCHAR), binarize(v) = code_from_bytes({arg}, {dim}) " \
              "FROM v ORDER BY id"
        got = nat.execute(sql).fetchall()
        assert got == duck.execute(sql).fetchall()
        assert got == [("".join("1" if b else "0" for b in row), True) for row in x > 0]


@pytest.mark.parametrize("query, message", [
    ("SELECT code_from_bytes('\\xA0\\x00'::BLOB, 3)", "2 bytes cannot hold a code of 3 bits"),
    ("SELECT code_from_bytes('\\xA1'::BLOB, 3)", "padding bits after bit 3 are not zero"),
    ("SELECT code_from_bytes('\\xA0'::BLOB, -1)", "bit length must not be negative, got -1"),
    ("SELECT code_from_bytes(''::BLOB, 0)", "a DuckDB BIT holds at least 1 bit, got a code of 0 bits"),
    ("SELECT code_from_bytes(binarize([1, 2, 3]::FLOAT[]), 16)", "1 bytes cannot hold a code of 16 bits"),
    ("SELECT code_from_bytes(binarize([1, 2, 3]::FLOAT[]), 2)", "padding bits after bit 2 are not zero"),
])
def test_code_from_bytes_errors_as_the_udfs(nat, duck, query, message):
    assert error_message(nat, query) == f"Invalid Input Error: {message}"
    assert message in error_message(duck, query)


def test_threads_1_and_2_give_the_same_rows(nat, corpus):
    codes = np.tile(sign_codes(corpus), (4, 1))  # 200000 rows: several row groups
    code_table(nat, "t", codes)
    q = codes[123].tobytes()
    sql = "SELECT id, hamming(code, ?) AS d FROM t ORDER BY d, id LIMIT 50"
    nat.execute("SET threads = 1")
    one = nat.execute(sql, [q]).fetchall()
    nat.execute("SET threads = 2")
    assert nat.execute(sql, [q]).fetchall() == one
    want = popcount_distances(codes, codes[123])
    assert [d for _, d in one] == sorted(want)[:50]


# ---- NULLs and errors ----

def test_nulls_give_null_as_the_udfs(nat, duck, corpus):
    codes = sign_codes(corpus[:500])
    nulls = {0, 7, 63, 64, 499}
    for con in (nat, duck):
        code_table(con, "t", codes, nulls)
    sql = "SELECT hamming(code, ?) FROM t ORDER BY id"
    got = [r[0] for r in nat.execute(sql, [codes[1].tobytes()]).fetchall()]
    assert got == [r[0] for r in duck.execute(sql, [codes[1].tobytes()]).fetchall()]
    want = popcount_distances(codes, codes[1])
    assert got == [None if i in nulls else int(want[i]) for i in range(len(codes))]
    assert nat.execute("SELECT hamming(NULL::BLOB, NULL::BLOB), hamming(NULL::BIT, '1'::BIT), "
                       "binarize(NULL::FLOAT[]), binarize([1]::FLOAT[], NULL::FLOAT[])").fetchone() == (None,) * 4


@pytest.mark.parametrize("query, message", [
    ("SELECT hamming('\\x01\\x03'::BLOB, '\\x00'::BLOB)", "different bit lengths 16 and 8"),
    ("SELECT hamming('\\x01'::BLOB, '\\x00\\x00\\x00'::BLOB)", "different bit lengths 8 and 24"),
    ("SELECT hamming(binarize([1,2,3]::FLOAT[]), binarize([1,2]::FLOAT[]))", "different bit lengths 3 and 2"),
    ("SELECT hamming(binarize([1,-2,3]::FLOAT[]), '\\xA1'::BLOB)", "padding bits after bit 3 are not zero"),
    ("SELECT hamming('\\xA0\\x00'::BLOB, binarize([1,-2,3]::FLOAT[]))", "2 bytes cannot hold a code of 3 bits"),
    ("SELECT binarize([]::FLOAT[])", "vector must have at least 1 dimension"),
    ("SELECT binarize([1, 'nan'::FLOAT, 3]::FLOAT[])", "NaN or infinity not allowed in vector (element 2)"),
    ("SELECT binarize([1, NULL, 3]::FLOAT[])", "vector must not contain nulls"),
    ("SELECT binarize([1,2,3]::FLOAT[], [0,3]::FLOAT[])", "vector has 3 dimensions but thresholds have 2"),
    ("SELECT binarize([1,2]::FLOAT[], [0,'inf'::FLOAT]::FLOAT[])",
     "NaN or infinity not allowed in thresholds (element 2)"),
    ("SELECT binarize(range(70000)::FLOAT[])", "vector cannot have more than 65536 dimensions, got 70000"),
])
def test_errors_carry_the_cores_messages_as_the_udfs(nat, duck, query, message):
    native = error_message(nat, query)
    assert native == f"Invalid Input Error: {message}"
    assert message in error_message(duck, query)  # the UDF's: wrapped in its Python exception
    prefixed = query.replace("hamming(", "bitpress_hamming(").replace("binarize(", "bitpress_binarize(")
    assert error_message(nat, prefixed) == native
    assert nat.execute("SELECT hamming('\\x01'::BLOB, '\\x03'::BLOB)").fetchone() == (1,)  # still alive


def test_a_length_mismatch_deep_in_a_column_is_an_error(nat, corpus):
    codes = [c.tobytes() for c in sign_codes(corpus[:5000])]
    codes[4321] = codes[4321][:-1]
    t = pa.table({"id": pa.array(np.arange(5000, dtype=np.int64)), "code": pa.array(codes, pa.binary())})
    nat.register("_t", t)
    msg = error_message(nat, f"SELECT id FROM _t ORDER BY hamming(code, from_hex('{codes[0].hex()}')) LIMIT 10")
    assert msg == "Invalid Input Error: different bit lengths 376 and 384"


# ---- the DuckDB CLI ----

def duckdb_cli():
    cli = Path(sys.executable).parent / "duckdb"
    if not cli.exists():
        pytest.fail(f"DuckDB CLI missing: {cli} (scripts/dev-env installs duckdb-cli==1.5.6)")
    return str(cli)


def test_the_duckdb_cli_loads_it_unsigned(ext, corpus):
    cli = duckdb_cli()
    version = subprocess.run([cli, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("v1.5.6")
    x = corpus[:3, :16]
    lists = ", ".join("[" + ", ".join(repr(float(v)) for v in row) + "]::FLOAT[]" for row in x)
    sql = (f"LOAD '{ext}'; SELECT bitpress_simd() AS simd, bitpress_version() AS version, "
           "hamming(from_hex('ff00'), from_hex('0f01')) AS h, hamming('abc', 'abd') AS s; "
           f"SELECT CAST(binarize(v) AS VARCHAR) AS code FROM (SELECT unnest([{lists}]) AS v);")
    r = subprocess.run([cli, "-unsigned", "-csv", "-c", sql], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[:2] == ["simd,version,h,s", f"{bitpress.simd()},{bitpress.__version__},5,1"]
    assert lines[2:] == ["code"] + ["".join("1" if b else "0" for b in row) for row in x > 0]
    # without -unsigned the CLI refuses the file; an error, not a crash
    r = subprocess.run([cli, "-csv", "-c", f"LOAD '{ext}'"], capture_output=True, text=True)
    assert r.returncode != 0 and "signature" in (r.stdout + r.stderr).lower()
    r = subprocess.run([cli, "-unsigned", "-c", f"LOAD '{ext}'; SELECT hamming(from_hex('01'), from_hex('0102'))"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "different bit lengths 8 and 16" in r.stdout + r.stderr


# ---- DuckDB's headers: from the pinned sdist, checked ----

def test_headers_come_from_the_pinned_sdist_checked_by_sha256(tmp_path, monkeypatch):
    sdist = next((d / f"duckdb-{duckdb_native.DUCKDB_SDIST_VERSION}.tar.gz" for d in duckdb_native.cache_dirs()
                  if (d / f"duckdb-{duckdb_native.DUCKDB_SDIST_VERSION}.tar.gz").is_file()), None)
    if sdist is None:
        pytest.skip("no cached DuckDB sdist to extract from (run `bitpress duckdb-extension` once)")
    monkeypatch.setattr(duckdb_native, "cache_dirs", lambda: [tmp_path])
    monkeypatch.setenv("BITPRESS_DUCKDB_SDIST", str(sdist))
    inc = duckdb_native.headers_dir()
    assert inc.parent == tmp_path and sorted(p.name for p in inc.iterdir()) == ["duckdb.h", "duckdb_extension.h"]
    assert "duckdb_ext_api_v1" in (inc / "duckdb_extension.h").read_text()
    # another file under the same name is refused, not used
    fake = tmp_path / "fake.tar.gz"
    fake.write_bytes(b"not duckdb")
    monkeypatch.setattr(duckdb_native, "cache_dirs", lambda: [tmp_path / "other"])
    monkeypatch.setenv("BITPRESS_DUCKDB_SDIST", str(fake))
    with pytest.raises(duckdb_native.BuildError, match="SHA-256 differs"):
        duckdb_native.headers_dir()


# ---- the adapter under AddressSanitizer and UBSan ----

SANITIZED = r'''
import sys
import duckdb, numpy as np, pyarrow as pa
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.execute(f"LOAD '{sys.argv[1]}'")
x = np.load(sys.argv[2])[:3000]
for dim in (384, 100, 7, 1, 2000):
    xs = np.tile(x, (1, 6))[:, :dim]
    con.register("_v", pa.table({"v": pa.FixedSizeListArray.from_arrays(pa.array(xs.ravel()), dim)}))
    con.execute("CREATE OR REPLACE TABLE v AS SELECT row_number() OVER () - 1 AS id, CAST(v AS FLOAT[]) AS v FROM _v")
    q = xs[0].tolist()
    want = np.unpackbits(np.packbits(xs > 0, axis=1) ^ np.packbits(xs[:1] > 0, axis=1), axis=1).sum(1)
    for sql in ("SELECT hamming(binarize(v), binarize(?::FLOAT[])) FROM v ORDER BY id",
                "SELECT hamming(code_bytes(binarize(v)), code_bytes(binarize(?::FLOAT[]))) FROM v ORDER BY id",
                "SELECT hamming(binarize(v), code_bytes(binarize(?::FLOAT[]))) FROM v ORDER BY id",
                "SELECT hamming(code_from_bytes(code_bytes(binarize(v)), len(v)), binarize(CAST(? AS DOUBLE[]))) "
                "FROM v ORDER BY id"):
        got = np.array(con.execute(sql, [q]).fetchall()).ravel()
        assert np.array_equal(got, want), (dim, sql)
for sql in ("SELECT binarize(range(70000)::DOUBLE[])", "SELECT hamming(from_hex('00'), from_hex('0000'))",
            "SELECT code_from_bytes(from_hex('ff'), 9223372036854775807)", "SELECT binarize([1, NULL]::DOUBLE[])",
            "SELECT hamming(code_bytes(binarize(range(20000)::FLOAT[])), binarize(range(19999)::FLOAT[]))"):
    try:
        con.execute(sql).fetchall()
        raise SystemExit(f"no error: {sql}")
    except duckdb.InvalidInputException:
        pass
print("ok")
'''


def test_the_adapter_under_asan_and_ubsan(tmp_path, monkeypatch):
    libs = []
    for lib in ("libasan.so", "libubsan.so"):
        p = subprocess.run(["gcc", "-print-file-name=" + lib], capture_output=True, text=True).stdout.strip()
        if not Path(p).is_file():
            pytest.skip(f"{lib} not found")
        libs.append(p)
    monkeypatch.setenv("BITPRESS_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "gcc")
    ext = duckdb_native.build(extra_cflags=("-g", "-O1", "-Wextra", "-Werror", "-fno-omit-frame-pointer",
                                            "-fsanitize=address,undefined", "-fno-sanitize-recover=all"))
    script = tmp_path / "run.py"
    script.write_text(SANITIZED)
    corpus = Path(load_shared.__globals__["SHARED_DATA"]) / "pypi-minilm" / "corpus.npy"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LD_PRELOAD": " ".join(libs),
           "ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
    r = subprocess.run([sys.executable, str(script), str(ext), str(corpus)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr[-3000:]
    assert "runtime error" not in r.stderr and "AddressSanitizer" not in r.stderr


def test_a_database_file_does_not_depend_on_the_extension(ext, tmp_path, corpus):
    path = str(tmp_path / "codes.duckdb")
    con = duckdb_native.connect(path)
    vector_table(con, "v", corpus[:500])
    con.execute("CREATE TABLE c AS SELECT id, binarize(v) AS code, code_bytes(binarize(v)) AS blob FROM v")
    cur = con.cursor()  # another connection to the same database sees the functions
    assert cur.execute("SELECT count(*) FROM c WHERE hamming(code, code) = 0 AND hamming(blob, code) = 0"
                       ).fetchone() == (500,)
    cur.close()
    con.close()
    plain = duckdb.connect(path)  # no LOAD: the data is plain BIT and BLOB
    rows = plain.execute("SELECT blob FROM c ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [c.tobytes() for c in sign_codes(corpus[:500])]
    with pytest.raises(duckdb.CatalogException):
        plain.execute("SELECT bitpress_hamming(blob, blob) FROM c").fetchall()
    plain.close()

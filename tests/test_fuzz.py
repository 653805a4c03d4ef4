"""Fuzz: random arguments at every bitpress function, random damage to bitpress's own tables.

Seeded and bounded in time (BITPRESS_FUZZ_SEED, BITPRESS_FUZZ_SECONDS: PostgreSQL gets that
many seconds, DuckDB half). The PostgreSQL functions are listed from pg_depend (members of the
extension), the DuckDB ones from duckdb_functions() (what bitpress.duckdb.register adds), so new
functions are fuzzed without editing this file. Every call must leave the backend alive, fail
only with a SQLSTATE that is not XX000 (nor a crash or a timeout), and where Python can compute
the exact answer (oracles below) return exactly that. Every bug it found is kept as a minimal
reproduction (FOUND, FOUND_DAMAGE, FOUND_DUCK): a regression test once fixed, a strict xfail
while it is open (OPEN: fixing it turns the xfail into a failure, then take it out of OPEN).
"""
from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from fuzz_inputs import (ANY, ERROR, Arg, World, damage, flat_floats, judge, oracle, pack, parse_text, rand_arg,
                         readers, signs_sql, value)

SEED = int(os.environ.get("BITPRESS_FUZZ_SEED", "20261207"))
SECONDS = float(os.environ.get("BITPRESS_FUZZ_SECONDS", "40"))

# ---- PostgreSQL -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pgw(postgresql_proc):
    """A database of its own with the world installed: (connect, world)."""
    p = postgresql_proc
    dbname = f"fuzz_{os.getpid()}"
    admin = psycopg.connect(host=p.host, port=p.port, user=p.user, dbname="postgres", autocommit=True)
    admin.execute(f"DROP DATABASE IF EXISTS {dbname}")
    admin.execute(f"CREATE DATABASE {dbname}")

    def connect():
        conn = psycopg.connect(host=p.host, port=p.port, user=p.user, dbname=dbname, autocommit=True)
        conn.execute("SET statement_timeout = '5s'; SET lock_timeout = '2s'")
        return conn

    world = World()
    with connect() as conn:
        conn.execute("CREATE EXTENSION vector; CREATE EXTENSION bitpress")
        world.install(conn)
    admin.close()  # a crash in the fuzz ends every session: a fresh one drops the database
    yield connect, world
    with psycopg.connect(host=p.host, port=p.port, user=p.user, dbname="postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


def pg_functions(conn):
    """Every function of the extension: (qualified name, name, kind, retset, return type,
    argument types, argument names, number of defaults)."""
    return conn.execute("""
        SELECT format('%I.%I', n.nspname, p.proname), p.proname, p.prokind, p.proretset,
               format_type(p.prorettype, NULL),
               array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) t),
               coalesce((SELECT array_agg(a.n ORDER BY a.o) FROM unnest(p.proargnames, p.proargmodes)
                         WITH ORDINALITY a(n, m, o) WHERE coalesce(a.m, 'i') IN ('i', 'b', 'v')), '{}'),
               p.pronargdefaults
        FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
          AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bitpress')
        ORDER BY 1, 6""").fetchall()


def pg_call(fn, args, rows=1):
    qname, _, prokind, retset, rettype = fn[:5]
    a = ", ".join(x.sql for x in args)
    if prokind == "a":
        return f"SELECT ({qname}({a}))::text FROM generate_series(1, {rows})"
    if retset:
        return f"SELECT * FROM {qname}({a}) LIMIT 1000"
    if rettype in ("internal", "void", "trigger"):
        return f"SELECT {qname}({a}) IS NULL"
    return f"SELECT ({qname}({a}))::text"


class PG:
    """Runs statements in transactions rolled back at once; records crashes and reconnects."""

    def __init__(self, connect):
        self.connect, self.conn = connect, connect()

    def run(self, sql, setup=()):
        """("ok", rows) or ("error", sqlstate); ("error", None) when the backend died."""
        try:
            with self.conn.transaction(force_rollback=True):
                for s in setup:
                    try:
                        with self.conn.transaction():
                            self.conn.execute(s)
                    except psycopg.errors.DatabaseError as e:
                        if isinstance(e, psycopg.OperationalError):
                            raise
                rows = self.conn.execute(sql).fetchall()
            self.conn.execute("SELECT 1")
            return "ok", rows
        except psycopg.Error as e:
            state = getattr(e, "sqlstate", None)
            try:
                self.conn.execute("SELECT 1")
            except psycopg.Error:
                state = None
            if state is None:
                self.reconnect()
            return "error", state

    def reconnect(self):
        deadline = time.time() + 60
        while True:
            try:
                self.conn.close()
                self.conn = self.connect()
                return
            except psycopg.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)


def pg_result(fn, rows):
    if fn[3]:  # set-returning: rows as tuples
        return [tuple(r) for r in rows]
    text = rows[0][0] if rows else None
    rettype = fn[4]
    if rettype == "real[]" and text is not None:
        if text.startswith("["):
            return ("bounds", text)  # non-default bounds: never a value bitpress should return
        return flat_floats(text)
    return parse_text(rettype, text)


def pg_sweep(pgw, seconds):
    connect, world = pgw
    pg = PG(connect)
    fns = pg_functions(pg.conn)
    assert len(fns) > 40, fns
    failures, calls, deadline, rnd = {}, 0, time.time() + seconds, 0
    while rnd == 0 or time.time() < deadline:
        for fn in fns:
            rng = random.Random(f"{SEED}:{fn[0]}:{fn[5]}:{rnd}")
            for _ in range(8):
                nargs = len(fn[5]) - rng.randint(0, fn[7])
                args = [rand_arg(rng, t, (list(fn[6]) + [""] * 9)[i]) for i, t in enumerate(fn[5][:nargs])]
                sql = pg_call(fn, args, rng.randint(0, 3))
                outcome, got = pg.run(sql)
                calls += 1
                if outcome == "ok":
                    got = pg_result(fn, got)
                    if isinstance(got, tuple) and got[0] == "bounds":
                        bad = f"returned an array with bounds {got[1][:60]}"
                        failures.setdefault(fn[1], []).append((sql, bad))
                        continue
                bad = judge(oracle(world, fn[1], fn[5], args), outcome, got)
                if bad:
                    failures.setdefault(fn[1], []).append((sql, bad))
        rnd += 1
    print(f"PostgreSQL fuzz: seed {SEED}, {calls} calls of {len(fns)} functions in {rnd} rounds")
    return failures


def report(failures, kind, what):
    """Fails on any failure but those of a function with an open bug of this kind (OPEN)."""
    known = {name for k, name, _ in OPEN if k == kind}
    lines = []
    for name, cases in sorted(failures.items()):
        for sql, bad in cases[:3]:
            lines.append(f"{'KNOWN ' if name in known else ''}{name}: {sql}\n    -> {bad}")
    print(f"\n{what} (seed {SEED}, replay with BITPRESS_FUZZ_SEED={SEED}):\n" + "\n".join(lines))
    new = {n: c for n, c in failures.items() if n not in known}
    assert not new, f"{what}: seed {SEED}\n" + "\n".join(line for line in lines if not line.startswith("KNOWN"))


@pytest.fixture(scope="module")
def pg_failures(pgw):
    return pg_sweep(pgw, SECONDS * 0.6)


def test_postgresql_functions_under_random_arguments(pg_failures):
    report(pg_failures, "args", "PostgreSQL functions")


# ---- PostgreSQL: bitpress's own tables damaged at random, then read ------------------------------

def corrupt_result(fn, rows):
    if fn in ("bitpress_store_knn", "bitpress_store_knn_parallel", "bitpress_knn"):
        return [tuple(r) for r in rows]
    text = rows[0][0]
    if text is None or fn in ("binarize",):
        return text
    if text.startswith("["):
        return ("bounds", text)
    return flat_floats(text) if fn not in ("bitpress_score", "tt_element") else float(text)


def pg_corrupt(pgw, seconds):
    connect, world = pgw
    pg = PG(connect)
    pg.conn.execute("SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0")
    cols = pg.conn.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                           "WHERE table_schema = 'bitpress' AND table_name NOT IN ('alembic_version', 'etl_jobs', "
                           "'code_columns') AND column_name <> 'created_at' ORDER BY 1, 2").fetchall()
    failures, rounds, deadline, before, seen = {}, 0, time.time() + seconds, [], collections.Counter()
    while rounds == 0 or time.time() < deadline:
        rng = random.Random(f"{SEED}:corrupt:{rounds}")
        rounds += 1
        setup, current = [], "damage"
        for _ in range(rng.choice([1, 1, 1, 2])):
            table, col, dtype = rng.choice(cols)
            ctids = pg.conn.execute(f'SELECT ctid::text FROM bitpress."{table}" ORDER BY ctid').fetchall()
            if ctids:
                setup += damage(rng, table, col, dtype, rng.choice(ctids)[0])
        conn = pg.conn
        try:
            with conn.transaction(force_rollback=True):
                for s in setup:
                    try:
                        with conn.transaction():
                            conn.execute(s)
                    except psycopg.errors.DatabaseError as e:
                        if isinstance(e, psycopg.OperationalError):
                            raise
                books = conn.execute("SELECT name, version, params FROM bitpress.codebooks").fetchall()
                for fn, sql, expect in readers(world, rng, books):
                    current = fn
                    try:
                        with conn.transaction():
                            outcome, got = "ok", corrupt_result(fn, conn.execute(sql).fetchall())
                    except psycopg.Error as e:
                        outcome, got = "error", e.sqlstate
                        if isinstance(e, psycopg.OperationalError) or conn.closed:
                            raise
                    seen[got if outcome == "error" else "answered"] += 1
                    bad = ("returned an array with bounds" if isinstance(got, tuple) and got[0] == "bounds"
                           else judge(expect, outcome, got))
                    if bad:
                        failures.setdefault(fn, []).append(
                            (f"{'; '.join(setup)}; {sql}", f"{bad}  [previous round: {'; '.join(before)}]"))
        except psycopg.OperationalError:
            failures.setdefault(current, []).append(("; ".join(setup), "the backend died"))
            pg.reconnect()
        before = setup
    print(f"PostgreSQL table damage: seed {SEED}, {rounds} rounds, reader outcomes {dict(seen.most_common())}")
    return failures


def test_postgresql_readers_of_damaged_tables(pgw, pg_failures):
    report(pg_corrupt(pgw, SECONDS * 0.4), "damage", "PostgreSQL readers of damaged tables")


# ---- DuckDB: the same, in a child process (a crash there must not end the test run) --------------
DUCK_ARGS = {"ffn": ["x", "layer"], "tt_reconstruct": ["model", "tensor"], "tt_reconstruct_row": ["model", "tensor", "i"],
             "tt_element": ["model", "tensor", "i", "j"], "tt_matvec": ["model", "tensor", "x"],
             "bitpress_encode": ["v", "codebook", "version"], "bitpress_score_udf": ["code", "query", "codebook", "stamp"],
             "bitpress_store_knn_udf": ["store", "query", "k"], "bitpress_sparse_ffn_udf": ["x", "layer", "k", "selector"],
             "bitpress_code_from_bytes": ["bytes", "n"]}
DUCK_TYPES = {"v": "FLOAT[]", "x": "FLOAT[]", "query": "FLOAT[]", "code": "BLOB-code", "version": "INTEGER",
              "k": "INTEGER", "oversample": "INTEGER", "i": "INTEGER", "j": "INTEGER", "n": "BIGINT"}
OPTIONAL = {"oversample", "codebook", "metric", "scoring", "books"}


def duck_functions(con):
    import duckdb

    q = "SELECT function_name, function_type, parameters, parameter_types FROM duckdb_functions()"
    plain = {(r[0], r[1], tuple(r[2]), tuple(map(str, r[3]))) for r in duckdb.connect().execute(q).fetchall()}
    ours = [r for r in con.execute(q + " ORDER BY ALL").fetchall() if (r[0], r[1], tuple(r[2]), tuple(map(str, r[3]))) not in plain]
    by_name = {r[0]: r for r in ours}
    out = []
    for name, kind, params, types in ours:
        if params and params[0] == "a0":  # a TEMP macro in front of a per-connection UDF name__bpN
            udf = next((r for n, r in by_name.items() if n.startswith(name + "__bp")), None)
            types = udf[3] if udf else [None] * len(params)
        base = name.split("__bp")[0]
        params = DUCK_ARGS.get(base, params)
        types = [t or DUCK_TYPES.get(p, "VARCHAR") for p, t in zip(params, types)]
        types = ["BLOB-code" if t == "BLOB" and p in ("code", "query", "col0", "col1") else t for p, t in zip(params, types)]
        out.append((name, kind, list(params), types))
    return out


def duck_call(rng, name, kind, params, types):
    args, sql = [], []
    for p, t in zip(params, types):
        if p == "thresholds_or_codebook":
            t, p = rng.choice([("FLOAT[]", p), ("VARCHAR", "codebook")])
        if p in ("query",) and name in ("bitpress_store_knn", "bitpress_store_knn_udf"):
            t = "BLOB-code"
        a = Arg("'fz_items'", "fz_items") if p == "tbl" else rand_arg(rng, t, p, duck=True)
        if p in OPTIONAL and kind == "table_macro":
            if rng.random() < 0.5:
                sql.append(f"{p} := {a.sql}")
            continue
        args.append(a)
        sql.append(a.sql)
    body = f"{name}({', '.join(sql)})"
    return args, (f"SELECT * FROM {body} LIMIT 1000" if kind == "table_macro" else f"SELECT {body}")


def duck_expect(con, world, name, args):
    types = ["real[]" if (isinstance(a.value, list) or a.sql.endswith("FLOAT[]")) else
             "integer" if a.sql.endswith("INTEGER") else "text" for a in args]
    base = {"bitpress_encode": "binarize", "bitpress_binarize": "binarize", "bitpress_binarize_sign": "binarize",
            "bitpress_store_knn": "bitpress_store_knn", "bitpress_store_knn_udf": "none"}.get(name.split("__bp")[0], name)
    if name in ("code_from_bytes", "bitpress_code_from_bytes", "code_bytes"):  # DuckDB's BIT codes ('0101')
        v = [a.value for a in args]
        if name == "code_bytes" or None in v:
            return ANY
        b = v[0] if isinstance(v[0], bytes) else pack(v[0][1] if isinstance(v[0], tuple) else v[0])
        n = v[1]
        if n > 0 and len(b) == (n + 7) // 8 and not (n % 8 and b[-1] & (0xFF >> (n % 8))):
            return value("".join(format(c, "08b") for c in b)[:n])
        return ERROR  # DuckDB has no empty BIT: 0 bits is refused too
    e = oracle(world, base, types, args, duck=True)
    if name.startswith("bitpress_encode") and args[2].value == 0:  # 0: the latest version
        e = oracle(world, base, types[:2], args[:2], duck=True)
    if e[0] == "value" and isinstance(e[1], str):  # a code: as binarize makes it from signs
        e = value(con.execute(f"SELECT {signs_sql(e[1])}").fetchone()[0] if e[1] else b"", strict=e[3])
    return e


def duck_error_is_bad(e, bitpress_classes):
    import duckdb

    msg = str(e)
    if isinstance(e, (duckdb.InternalException, duckdb.FatalException)):
        return f"DuckDB internal error: {msg[:300]}"
    if "while executing the UDF:" in msg:
        cls = msg.split("while executing the UDF:", 1)[1].strip().split(":", 1)[0]
        if cls not in bitpress_classes:
            return f"a {cls} escaped from the UDF (no SQLSTATE): {msg[:300]}"
    return None


def duck_main(seconds, progress):
    """The DuckDB fuzz (run in a child process): prints its failures as JSON."""
    import bitpress.duckdb
    from bitpress import errors

    classes = {n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, errors.BitpressError)
               and getattr(c, "sqlstate", "XX000") != "XX000"}
    world = World()
    con = bitpress.duckdb.connect()
    world.install(con, duck=True)
    fns = duck_functions(con)
    failures, calls, rnd, deadline = {}, 0, 0, time.time() + seconds
    while rnd == 0 or time.time() < deadline:
        for name, kind, params, types in fns:
            rng = random.Random(f"{SEED}:duck:{name}:{params}:{rnd}")
            for _ in range(4):
                args, sql = duck_call(rng, name, kind, params, types)
                with open(progress, "w") as f:
                    f.write(sql)
                calls += 1
                try:
                    rows = con.execute(sql).fetchall()
                    got = [tuple(r) for r in rows] if kind == "table_macro" else rows[0][0]
                    bad = judge(duck_expect(con, world, name, args), "ok", got)
                except Exception as e:  # noqa: BLE001 - every DuckDB error is judged here
                    bad = duck_error_is_bad(e, classes) or judge(duck_expect(con, world, name, args), "error", "22000")
                    try:
                        con.execute("SELECT 1").fetchall()
                    except Exception as e2:  # noqa: BLE001
                        bad, con = f"the connection is unusable afterwards: {e2}", bitpress.duckdb.connect()
                        world.install(con, duck=True)
                if bad:
                    failures.setdefault(name.split("__bp")[0], []).append((sql, bad))
        rnd += 1
    print(json.dumps({"calls": calls, "functions": len(fns), "rounds": rnd, "failures": failures}, default=str))


@pytest.fixture(scope="module")
def duck_failures(tmp_path_factory):
    progress = tmp_path_factory.mktemp("fuzz") / "duck_call.sql"
    here = Path(__file__).parent
    code = f"import sys; sys.path.insert(0, {str(here)!r}); import test_fuzz; test_fuzz.duck_main({SECONDS / 2}, {str(progress)!r})"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SECONDS + 300,
                       env={**os.environ, "BITPRESS_FUZZ_SEED": str(SEED)})
    if p.returncode != 0:
        last = progress.read_text() if progress.exists() else "(before the first call)"
        return {"DuckDB process": [(last, f"died with exit code {p.returncode}: {p.stderr[-2000:]}")]}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"DuckDB fuzz: seed {SEED}, {out['calls']} calls of {out['functions']} functions in {out['rounds']} rounds")
    return out["failures"]


def test_duckdb_functions_under_random_arguments(duck_failures):
    report(duck_failures, "duckdb", "DuckDB functions")


# ---- bugs the fuzz found: each a minimal reproduction; a regression test once fixed, a strict
# xfail while it is open (OPEN), so that fixing it makes the xfail fail until it is moved ---------
Q = "'[1,1,1,1,1,1,1,1,1,1,1,1]'::vector"
FOUND = {  # function: [(why, setup statements, SQL, expected)]
    "bitpress_knn": [
        ("a NULL query answers 0 rows instead of raising (issue #15 class 6)", [],
         "SELECT id FROM bitpress_knn(NULL::fz_items, 'code', 'v', NULL::vector, 3)", ERROR),
        ("without a store, rows whose code is NULL are candidates (2 more rows than with the store)",
         ["SELECT bitpress_store_drop('fz_store')"],
         f"SELECT count(*) FROM bitpress_knn(NULL::fz_items, 'code', 'v', {Q}, 50, 100)", value([(39,)]))],
    "bitpress_knn_codes": [
        ("a NULL query answers k arbitrary rows instead of raising (issue #15 class 6)", [],
         "SELECT id FROM bitpress_knn_codes(NULL::fz_items, 'code', NULL::vector, 3)", ERROR)],
    "bitpress_score": [
        ("a score past float4 came back as Infinity (float32 sums of q * delta): now 22003", [],
         "SELECT bitpress_score(B'010000000000', '[0,3.4e38,0,0,0,0,0,0,0,0,0,0]'::vector, 'fz_sign')::text",
         ERROR)],
    "code_from_bytes": [
        ("code_from_bytes(code_bytes(B''), 0) cannot round-trip (issue #15, lesser)", [],
         "SELECT code_from_bytes(code_bytes(B''), 0)::text", value(""))],
}
FOUND_DAMAGE = {  # the same for readers of damaged tables (setup damages them, rolled back)
    "tt_reconstruct": [
        ("a NULL tt_tensors.shape crashes the backend (class 1: isnull not checked)",
         ["ALTER TABLE bitpress.tt_tensors ALTER COLUMN shape DROP NOT NULL",
          "UPDATE bitpress.tt_tensors SET shape = NULL WHERE tensor = 'w'"],
         "SELECT tt_reconstruct('fz_model', 'w')::text", ERROR)],
    "bitpress_store_knn": [
        ("a padding bit set in a code_delta code is counted: id 2 at distance 7, not 6 (the parallel path raises 22000)",
         ["UPDATE bitpress.code_delta SET code = set_byte(code, 1, get_byte(code, 1) | 1) WHERE id = 2 AND code IS NOT NULL"],
         "SELECT id, distance FROM bitpress_store_knn('fz_store', B'000000001110'::varbit, 50) WHERE id = 2", ERROR)],
}
S9, S12 = "binarize([1.0, -1.0, 1.0, -1.0, -1.0, -1.0, 1.0, 1.0, -1.0])", signs_sql("101000110000")
FOUND_DUCK = {  # the same for DuckDB
    "hamming": [("codes of 9 and 12 bits (both 2 bytes) give a distance; PostgreSQL raises 22000 (class 7)",
                 f"SELECT hamming({S9}, {S12})", ERROR)],
    "bitpress_store_knn": [("a 9-bit query is scored against a store of 12-bit codes (class 7)",
                            f"SELECT * FROM bitpress_store_knn('fz_store', {S9}, 3)", ERROR)],
    "bitpress_score_udf": [("a malformed stamp escapes as ValueError (no SQLSTATE)",
                            f"SELECT bitpress_score_udf({S12}, {[1.0] * 12}::FLOAT[], 'fz_sign', 'x')", ERROR)],
}


OPEN = set()  # none open


def _known(table, kind):
    return [pytest.param(kind, name, i, id=f"{kind}-{name}-{i}",
                         marks=[pytest.mark.xfail(strict=True, reason="open bug: fixed, it fails; "
                                                  "then take it out of OPEN")] if (kind, name, i) in OPEN else [])
            for name, cases in table.items() for i in range(len(cases))]


@pytest.mark.parametrize("kind, name, i", _known(FOUND, "args") + _known(FOUND_DAMAGE, "damage"))
def test_postgresql_bug_found_by_the_fuzz(pgw, kind, name, i):
    why, setup, sql, expect = (FOUND if kind == "args" else FOUND_DAMAGE)[name][i]
    outcome, got = PG(pgw[0]).run(sql, setup)
    if outcome == "ok":
        got = [tuple(r) for r in got] if expect[0] != "value" or isinstance(expect[1], list) else \
            parse_text("double precision" if isinstance(expect[1], float) else "text", got[0][0])
    bad = judge(expect, outcome, got)
    assert bad is None, f"{why}: {sql} -> {bad}"


@pytest.mark.parametrize("kind, name, i", _known(FOUND_DUCK, "duckdb"))
def test_duckdb_bug_found_by_the_fuzz(kind, name, i):
    import bitpress.duckdb
    from bitpress import errors

    why, sql, expect = FOUND_DUCK[name][i]
    con = bitpress.duckdb.connect()
    World().install(con, duck=True)
    classes = {n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, errors.BitpressError)}
    try:
        rows = con.execute(sql).fetchall()
        bad = judge(expect, "ok", rows[0][0] if rows and len(rows[0]) == 1 else rows)
    except Exception as e:  # noqa: BLE001
        bad = duck_error_is_bad(e, classes) or judge(expect, "error", "22000")
    assert bad is None, f"{why}: {sql} -> {bad}"

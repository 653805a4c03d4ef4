"""Fuzz: random arguments at every bitpress function, random damage to bitpress's own tables.

Seeded and bounded in time (BITPRESS_FUZZ_SEED, BITPRESS_FUZZ_SECONDS: PostgreSQL gets that
many seconds, DuckDB half). The PostgreSQL functions are listed from pg_depend (members of the
extension), the DuckDB ones from duckdb_functions() (what bitpress.duckdb.register adds), so new
functions are fuzzed without editing this file. Every call must leave the backend alive, fail
only with a SQLSTATE that is not XX000 (nor a crash or a timeout), and where Python can compute
the exact answer (oracles below) return exactly that. Known bugs: KNOWN, each a minimal
reproduction run as a strict xfail (fixing the bug turns it into a failure: remove the entry).
"""
from __future__ import annotations

import collections
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from fuzz_inputs import D, Arg, close, flat_floats, parse_text, rand_arg, rand_floats, signs_sql

SEED = int(os.environ.get("BITPRESS_FUZZ_SEED", "20261207"))
SECONDS = float(os.environ.get("BITPRESS_FUZZ_SECONDS", "40"))
BAD_STATES = ("XX000", "57P", "08", "57014")  # internal error, crash / shutdown, lost, timeout
ANY, ERROR = ("any",), ("error",)


def value(v, tol=None, strict=True, mag=0.0):
    """An exact answer (floats: within tol of the magnitude of the terms, mag)."""
    return ("value", v, tol, strict, mag)


# ---- the world: what the fuzzed functions read, and its exact Python form --------------------
class World:
    def __init__(self):
        from bitpress import ffn, tt
        from bitpress.codebook import Codebook

        rng = np.random.default_rng(7)
        x = rng.standard_normal((40, D)).astype(np.float32)
        self.items = {int(i * 3 - 7): (x[i], "".join("1" if t > 0 else "0" for t in x[i])) for i in range(40)}
        self.items[-7] = (self.items[-7][0], None)  # a row without a code
        self.books = {("fz_sign", 1): Codebook("sign", D, src_a=np.arange(D), thr_a=np.zeros(D),
                                               base=-np.ones(D), delta=2 * np.ones(D)),
                      ("fz_mean", 1): Codebook("mean", D, src_a=np.arange(D), thr_a=x.mean(0)),
                      ("fz_mean", 2): Codebook("mean", D, src_a=np.arange(D), thr_a=np.median(x, 0))}
        w = (rng.standard_normal((6, 2)) @ rng.standard_normal((2, 8))).astype(np.float32)
        self.tensors = {"w": (w, tt.decompose(w, modes=[(2, 2), (3, 4)])),
                        "bias": (rng.standard_normal(8).astype(np.float32), None),
                        "cube": (rng.standard_normal((2, 3, 4)).astype(np.float32), None)}
        for k, (a, res) in list(self.tensors.items()):
            res = res or tt.decompose(a, modes=[tt.matrix_shape(a.shape)])
            self.tensors[k] = (tt.reconstruct(res.cores).reshape(a.shape), res)
        f = lambda *s: (rng.standard_normal(s) / 3).astype(np.float32)  # noqa: E731
        self.layer = ffn.Layer(f(D, 16), f(16), f(16, D), f(D), "relu", f(D, 4), f(4, 16), f(16))

    def changes(self):
        """What is written after the store is made (PostgreSQL tracks it in the delta)."""
        rng = np.random.default_rng(8)
        new = {1000 + i: rng.standard_normal(D).astype(np.float32) for i in range(3)}
        return new, [-4, 2], [5, 8], 11  # inserted, codes flipped, deleted, code set NULL

    def apply_changes(self):
        new, flip, gone, nulled = self.changes()
        for i, v in new.items():
            self.items[i] = (v, "".join("1" if t > 0 else "0" for t in v))
        for i in flip:
            v, c = self.items[i]
            self.items[i] = (v, "".join("1" if b == "0" else "0" for b in c))
        for i in gone:
            del self.items[i]
        self.items[nulled] = (self.items[nulled][0], None)

    def install(self, conn, duck=False):
        from bitpress import codebooks, ffn, schema, stores, tensors
        from bitpress.tables import execute

        schema.upgrade(conn)
        execute(conn, f"CREATE TABLE fz_items (id bigint PRIMARY KEY, v {'FLOAT[12]' if duck else 'vector(12)'}, "
                      f"code {'BLOB' if duck else 'bit(12)'})")
        code = (lambda c: bytes(np.packbits([b == "1" for b in c]))) if duck else (lambda c: c)
        ins = "INSERT INTO fz_items VALUES (%s, %s, %s)" if duck else "INSERT INTO fz_items VALUES (%s, %s::vector, %s::varbit)"
        vec = (lambda v: [float(t) for t in v]) if duck else (lambda v: str([float(t) for t in v]))
        for i, (v, c) in self.items.items():
            execute(conn, ins, (i, vec(v), None if c is None else code(c)))
        for (name, _), cb in sorted(self.books.items()):
            codebooks.save(conn, name, cb)
        if not duck:
            stores.create(conn, "fz_store", "fz_items", "id", "code", 8)
        new, flip, gone, nulled = self.changes()
        for i, v in new.items():
            execute(conn, ins, (i, vec(v), code("".join("1" if t > 0 else "0" for t in v))))
        for i in flip:
            c = "".join("1" if b == "0" else "0" for b in self.items[i][1])
            execute(conn, "UPDATE fz_items SET code = %s WHERE id = %s" if duck else
                    "UPDATE fz_items SET code = %s::varbit WHERE id = %s", (code(c), i))
        execute(conn, "DELETE FROM fz_items WHERE id IN (5, 8)", ())
        execute(conn, "UPDATE fz_items SET code = NULL WHERE id = %s", (nulled,))
        if duck:
            stores.create(conn, "fz_store", "fz_items", "id", "code", 8)
        self.apply_changes()
        for name, (_, res) in self.tensors.items():
            tensors.write(conn, "fz_model", name, res)
        ffn.save(conn, "fz_layer", self.layer)
        ffn.save(conn, "fz_layer8", self.layer, int8=True)

    # ---- exact answers ----
    def knn(self, q, k):
        rows = sorted((sum(a != b for a, b in zip(c, q)), i) for i, (_, c) in self.items.items() if c is not None)
        return [(i, d) for d, i in rows[:k]]

    def ffn(self, x, act="relu"):
        z = np.asarray(x, np.float64) @ self.layer.w1 + self.layer.b1
        a = {"relu": lambda z: np.maximum(z, 0), "silu": lambda z: z / (1 + np.exp(-z)),
             "gelu_erf": np.vectorize(lambda t: 0.5 * t * (1 + math.erf(t / math.sqrt(2)))),
             "gelu_tanh": lambda z: 0.5 * z * (1 + np.tanh(0.7978845608 * (z + 0.044715 * z ** 3)))}[act](z)
        return a @ self.layer.w2 + self.layer.b2

    def matrix(self, tensor):
        a = self.tensors[tensor][0]
        return a.reshape(1, -1) if a.ndim == 1 else a.reshape(a.shape[0], -1)


def ordinary(xs):
    return all(x is not None and (x == 0 or 1e-30 < abs(x) < 1e30) for x in xs)


def bits_of(xs, thr):
    return "".join("1" if x > t else "0" for x, t in zip(np.float32(xs), np.float32(thr)))


def oracle(world, name, types, a, duck=False):
    """The expected outcome of name(*a) (argument values, None = NULL), or ANY."""
    vals = [x.value for x in a]
    if name in ("bitpress_knn", "bitpress_knn_codes") and len(vals) > 3:
        return ERROR if vals[3 if name == "bitpress_knn" else 2] is None else ANY
    if any(v is None for v in vals) or any(isinstance(v, tuple) for v in vals):
        return ANY  # STRICT NULL, 2-D arrays
    floats = [v for v, t in zip(vals, types) if t in ("vector", "real[]") and isinstance(v, list)]
    has_null_elem = any(None in f for f in floats)
    strict = ordinary(sum(floats, [])) and not has_null_elem
    if name == "hamming":
        return value(sum(x != y for x, y in zip(*vals))) if len(vals[0]) == len(vals[1]) else ERROR
    if name == "code_bytes":
        return value(bytes(np.packbits([c == "1" for c in vals[0]])) if vals[0] else b"")
    if name == "code_from_bytes":
        b, n = vals
        if n >= 0 and len(b) == (n + 7) // 8 and not (n % 8 and b[-1] & (0xFF >> (n % 8))):
            return value("".join(format(c, "08b") for c in b)[:n])
        return ERROR
    if has_null_elem and name in ("binarize", "tt_matvec", "ffn", "bitpress_score"):
        return ERROR
    if name == "binarize":
        x = vals[0]
        if len(vals) == 1:
            return value(bits_of(x, [0] * len(x)), strict=strict) if x else ANY
        if types[1] == "real[]":
            return value(bits_of(x, vals[1]), strict=strict) if len(x) == len(vals[1]) and x else ERROR
        book = world.books.get((vals[1], vals[2] if len(vals) > 2 else (2 if vals[1] == "fz_mean" else 1)))
        if len(vals) > 2 and vals[2] == 0:
            return ANY
        if book is None or len(x) != D:
            return ERROR
        code = "".join(str(b) for b in np.unpackbits(book.encode_reference(x)[0])[:D])
        return value(code, strict=strict)
    if name in ("bitpress_store_knn", "bitpress_store_knn_parallel"):
        store, q, k = vals
        if store != "fz_store" or k < 1 or len(q) != D:
            return ERROR
        return value(world.knn(q, k))
    if name == "bitpress_score" and not duck:
        code, q, book = vals[:3]
        if len(vals) == 4 and vals[3] == 0:
            return ANY
        cb = world.books.get((book, vals[3] if len(vals) == 4 else (2 if book == "fz_mean" else 1)))
        if cb is None or cb.base is None or len(code) != D or len(q) != D:
            return ERROR
        xhat = cb.reconstruct_reference(np.packbits([c == "1" for c in code]))[0]
        return value(float(np.dot(np.float32(q), xhat)), 1e-5, strict, float(np.abs(np.float32(q)) @ np.abs(xhat)))
    if name.startswith("tt_") and len(vals) >= 2:
        if vals[0] != "fz_model" or vals[1] not in world.tensors:
            return ERROR
        m = world.matrix(vals[1])
        if name in ("tt_reconstruct", "tt_vector"):
            full = world.tensors[vals[1]][0]
            return value(full.reshape(-1), 1e-5) if name == "tt_reconstruct" or full.ndim == 1 else ANY
        if name in ("tt_reconstruct_row", "tt_reconstruct_row_vector", "tt_element"):
            i, j = vals[2], (vals[3] if len(vals) > 3 else 1)
            if not (1 <= i <= m.shape[0] and 1 <= j <= m.shape[1]):
                return ERROR
            if name == "tt_reconstruct_row_vector" and world.tensors[vals[1]][0].ndim > 2:
                return ANY  # a row of a 3-D tensor is 2-D: no vector
            return value(m[i - 1] if name != "tt_element" else m[i - 1, j - 1], 1e-5)
        if name == "tt_matvec":
            x = vals[2]
            if len(x) != m.shape[0]:
                return ERROR
            return value(np.float32(x) @ m.astype(np.float64), 1e-5, strict, float(np.abs(np.float32(x)) @ np.abs(m).max(1)))
    if name == "ffn" and len(vals) == 2:
        if vals[1] not in ("fz_layer", "fz_layer8"):
            return ERROR
        if len(vals[0]) != D:
            return ERROR
        mag = float(np.abs(np.float32(vals[0])).sum()) * 3
        return value(world.ffn(vals[0]), 1e-4, strict, mag) if vals[1] == "fz_layer" else ANY
    return ANY


def judge(expect, outcome, got):
    """None when the outcome agrees with the expectation, else what is wrong."""
    if outcome == "error":
        state = got
        if state is None or state.startswith(BAD_STATES):
            return f"error with SQLSTATE {state}"
        if expect[0] == "value" and expect[3]:
            return f"refused a valid call ({state}); expected {expect[1]!r}"
        return None
    if expect is ERROR:
        return f"answered {got!r}, expected an error"
    if expect[0] == "oneof":
        ok = got is not None and any(got == w if expect[2] is None else close(got, w, expect[2]) for w in expect[1])
        return None if ok else f"answered {got!r}, expected one of {[np.asarray(w).tolist() for w in expect[1]]!r}"
    if expect[0] == "value":
        want, tol = expect[1], expect[2]
        if got is None:
            return f"answered NULL, expected {want!r}"
        if tol is None:
            return None if got == want else f"answered {got!r}, expected {want!r}"
        return None if close(got, want, tol, expect[4]) else f"answered {got!r}, expected {np.asarray(want).tolist()!r}"
    return None


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


def report(failures, known, what):
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
    report(pg_failures, KNOWN, "PostgreSQL functions")




# ---- PostgreSQL: bitpress's own tables damaged at random, then read ------------------------------
BLOBS = {"params"}  # no checksum: only damage a reader can see (header, size, NaN) is made there


def damage(rng, table, col, dtype, ctid):
    """SQL statements that damage one column of one row of bitpress.<table> (or the row)."""
    where = f"WHERE ctid = '{ctid}'"
    t, c = f'bitpress."{table}"', f'"{col}"'
    r, roll = round(rng.random(), 3), rng.random()
    if table == "code_delta":  # a well-formed delta row cannot be told from a real change: malform it
        if col == "code":  # 12-bit codes: a wrong length, or a padding bit set
            e = rng.choice([f"{c} || '\\x00'::bytea", f"substring({c} from 1 for 1)", f"set_byte({c}, 1, get_byte({c}, 1) | 1)"])
            return [f"UPDATE {t} SET {c} = {e} {where}"]
        if col not in ("id", "seq"):
            return []
        roll = 0
    if roll < 0.15:
        return [f"ALTER TABLE {t} ALTER COLUMN {c} DROP NOT NULL", f"UPDATE {t} SET {c} = NULL {where}"]
    if roll < 0.22:
        return [f"DELETE FROM {t} {where}"]
    at = f"floor({r} * length({c}))::int"
    if dtype in ("integer", "bigint", "smallint"):
        e = rng.choice(["0", "1", "-1", "2147483647", "-2147483648", f"{c} + 1", f"{c} - 1", f"-{c}", f"{c} * 2",
                        f"{c} + 4294967296" if dtype == "bigint" else f"{c} + 7"])
    elif dtype == "bytea":
        head = f"least({at}, 31)" if col in BLOBS else at
        e = rng.choice([
            *([f"CASE WHEN length({c}) > 0 THEN set_byte({c}, {head}, get_byte({c}, {head}) # {1 << rng.randrange(8)}) "
               f"ELSE {c} END"] * 3),
            f"substring({c} from 1 for {at})", f"{c} || '\\x{rng.randbytes(rng.choice([1, 4, 8])).hex()}'::bytea",
            f"CASE WHEN length({c}) >= 8 THEN overlay({c} placing '\\x0000c07f'::bytea "
            f"from 4 * floor({r} * (length({c}) / 4 - 1))::int + 5) ELSE {c} END",
            f"'\\x{rng.randbytes(rng.randrange(0, 40)).hex()}'::bytea", "''::bytea"])
    elif dtype == "ARRAY":
        e = rng.choice(["'{}'", "'{0}'", "'{-1,5}'", "'{2147483647,2}'", "'[-1:0]={6,8}'", "'{NULL,8}'", "'{{6,8}}'",
                        f"{c} || 1", f"{c}[2:]", "'{8,6}'", "'{2,3,4}'", "'{6,2,4}'", "'{48}'", "'{1,6,8,1}'"])
    elif dtype in ("double precision", "real"):
        e = rng.choice(["'NaN'", "-1", "1e300"])
    elif dtype in ("text", "character varying"):
        e = rng.choice(["''", "'nope'", "'fz_items'", "'public.fz_items'", "'pg_class'", f"{c} || 'x'", "'fz_store'",
                        "'w'", "'bias'", "'fz_mean'", "'tt'", "'dense'", "'int8'", "'float32'", "'relu'"])
    elif dtype in ("oid", "regclass"):
        e = rng.choice(["'pg_class'::regclass", "0", f"{c}::oid + 1"])
    else:
        return [f"ALTER TABLE {t} ALTER COLUMN {c} DROP NOT NULL", f"UPDATE {t} SET {c} = NULL {where}"]
    return [f"UPDATE {t} SET {c} = {e} {where}"]


def book_expect(books, name, version, x, code=None):
    """What binarize / bitpress_score must give under the codebook rows as they are now."""
    from bitpress.codebook import Codebook

    rows = [r for r in books if r[0] == name and (version is None or r[1] == version)]
    if any(r[1] is None for r in rows):
        return ANY
    if not rows:
        return ERROR
    params = max(rows, key=lambda r: r[1])[2]
    try:
        cb = Codebook.from_bytes(params) if params is not None else None
    except Exception:
        cb = None
    if cb is None or cb.dims != len(x) or (code is not None and (cb.base is None or cb.bits != len(code))):
        return ERROR
    if code is not None:
        xhat = cb.reconstruct_reference(np.packbits([c == "1" for c in code]))[0]
        return value(float(np.dot(np.float32(x), xhat)), 1e-5, False, float(np.abs(np.float32(x)) @ np.abs(xhat)))
    return value("".join(str(b) for b in np.unpackbits(cb.encode_reference(x)[0])[:cb.bits]), strict=False)


def readers(world, rng, books):
    """(function, SQL, expected) of the readers of every table, with valid arguments."""
    q = "".join(rng.choice("01") for _ in range(D))
    x = rand_floats(rng, finite=True)[:D] or [0.5]
    x = (x * D)[:D]
    xs = "'{" + ",".join(map(repr, x)) + "}'::real[]"
    k = rng.choice([1, 3, 50])
    out = [(f, f"SELECT id, distance FROM {f}('fz_store', B'{q}'::varbit, {k})", value(world.knn(q, k), strict=False))
           for f in ("bitpress_store_knn", "bitpress_store_knn_parallel")]
    v = np.float32(x)
    cos = sorted((1 - float(np.dot(r, v) / np.linalg.norm(r) / np.linalg.norm(v)), i)
                 for i, (r, c) in world.items.items() if c is not None)
    every = sorted((1 - float(np.dot(r, v) / np.linalg.norm(r) / np.linalg.norm(v)), i) for i, (r, _) in world.items.items())
    out.append(("bitpress_knn", f"SELECT id FROM bitpress_knn(NULL::fz_items, 'code', 'v', {xs}::vector, 3, 100)",
                ("oneof", [[(i,) for _, i in cos[:3]], [(i,) for _, i in every[:3]]], None)))  # see KNOWN
    for t, (a, _) in world.tensors.items():
        out.append(("tt_reconstruct", f"SELECT tt_reconstruct('fz_model', '{t}')::text", value(a.reshape(-1), 1e-5, False)))
    m = world.matrix("w")
    i, j = rng.randint(1, 6), rng.randint(1, 8)
    out.append(("tt_element", f"SELECT tt_element('fz_model', 'w', {i}, {j})::text", value(m[i - 1, j - 1], 1e-5, False)))
    out.append(("tt_matvec", f"SELECT tt_matvec('fz_model', 'w', ({xs})[1:6])::text", value(v[:6] @ m, 1e-4, False)))
    acts = [world.ffn(x, a) for a in ("relu", "silu", "gelu_erf", "gelu_tanh")]
    out.append(("ffn", f"SELECT ffn({xs}, 'fz_layer')::text", ("oneof", acts, 1e-3)))
    out += [("sparse_ffn", f"SELECT sparse_ffn({xs}, 'fz_layer', 4)::text", ANY),
            ("ffn", f"SELECT ffn({xs}, 'fz_layer8')::text", ANY)]
    for name, ver in (("fz_sign", None), ("fz_mean", None), ("fz_mean", 1)):
        out.append(("binarize", f"SELECT binarize({xs}, '{name}'{'' if ver is None else f', {ver}'})::text",
                    book_expect(books, name, ver, x)))
    out.append(("bitpress_score", f"SELECT bitpress_score(B'{q}'::varbit, {xs}::vector, 'fz_sign')::text",
                book_expect(books, "fz_sign", None, x, q)))
    return out


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
    report(pg_corrupt(pgw, SECONDS * 0.4), KNOWN_DAMAGE, "PostgreSQL readers of damaged tables")


# ---- DuckDB: the same, in a child process (a crash there must not end the test run) --------------
DUCK_ARGS = {"ffn": ["x", "layer"], "tt_reconstruct": ["model", "tensor"], "tt_reconstruct_row": ["model", "tensor", "i"],
             "tt_element": ["model", "tensor", "i", "j"], "tt_matvec": ["model", "tensor", "x"],
             "bitpress_encode": ["v", "codebook", "version"], "bitpress_score_udf": ["code", "query", "codebook", "stamp"],
             "bitpress_store_knn_udf": ["store", "query", "k"], "bitpress_sparse_ffn_udf": ["x", "layer", "k", "selector"]}
DUCK_TYPES = {"v": "FLOAT[]", "x": "FLOAT[]", "query": "FLOAT[]", "code": "BLOB-code", "version": "INTEGER",
              "k": "INTEGER", "oversample": "INTEGER", "i": "INTEGER", "j": "INTEGER"}
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
    report(duck_failures, KNOWN_DUCK, "DuckDB functions")


# ---- known bugs: each a minimal reproduction, a strict xfail until it is fixed ------------------
Q = "'[1,1,1,1,1,1,1,1,1,1,1,1]'::vector"
KNOWN = {  # function: [(why, setup statements, SQL, expected)]
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
        ("a finite score comes back as Infinity (float32 overflow of q * delta; exact: 3.4e38)", [],
         "SELECT bitpress_score(B'010000000000', '[0,3.4e38,0,0,0,0,0,0,0,0,0,0]'::vector, 'fz_sign')::text",
         value(3.3999999521443642e+38, 1e-6))],
    "code_from_bytes": [
        ("code_from_bytes(code_bytes(B''), 0) cannot round-trip (issue #15, lesser)", [],
         "SELECT code_from_bytes(code_bytes(B''), 0)::text", value(""))],
}
KNOWN_DAMAGE = {  # the same for readers of damaged tables (setup damages them, rolled back)
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
KNOWN_DUCK = {  # the same for DuckDB
    "hamming": [("codes of 9 and 12 bits (both 2 bytes) give a distance; PostgreSQL raises 22000 (class 7)",
                 f"SELECT hamming({S9}, {S12})", ERROR)],
    "bitpress_store_knn": [("a 9-bit query is scored against a store of 12-bit codes (class 7)",
                            f"SELECT * FROM bitpress_store_knn('fz_store', {S9}, 3)", ERROR)],
    "bitpress_score_udf": [("a malformed stamp escapes as ValueError (no SQLSTATE)",
                            f"SELECT bitpress_score_udf({S12}, {[1.0] * 12}::FLOAT[], 'fz_sign', 'x')", ERROR)],
}


def _known(table):
    return [pytest.param(name, i, id=f"{name}-{i}") for name, cases in table.items() for i in range(len(cases))]


@pytest.mark.xfail(strict=True, reason="known bug: fixing it makes this case fail, then remove it from KNOWN")
@pytest.mark.parametrize("name, i, table", [(*p.values, "damage") for p in _known(KNOWN_DAMAGE)] +
                         [(*p.values, "args") for p in _known(KNOWN)])
def test_known_postgresql_bug(pgw, name, i, table):
    why, setup, sql, expect = (KNOWN if table == "args" else KNOWN_DAMAGE)[name][i]
    outcome, got = PG(pgw[0]).run(sql, setup)
    if outcome == "ok":
        got = [tuple(r) for r in got] if expect[0] != "value" or isinstance(expect[1], list) else \
            parse_text("double precision" if isinstance(expect[1], float) else "text", got[0][0])
    bad = judge(expect, outcome, got)
    assert bad is None, f"{why}: {sql} -> {bad}"


@pytest.mark.xfail(strict=True, reason="known bug: fixing it makes this case fail, then remove it from KNOWN_DUCK")
@pytest.mark.parametrize("name, i", _known(KNOWN_DUCK))
def test_known_duckdb_bug(name, i):
    import bitpress.duckdb
    from bitpress import errors

    why, sql, expect = KNOWN_DUCK[name][i]
    con = bitpress.duckdb.connect()
    World().install(con, duck=True)
    classes = {n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, errors.BitpressError)}
    try:
        rows = con.execute(sql).fetchall()
        bad = judge(expect, "ok", rows[0][0] if rows and len(rows[0]) == 1 else rows)
    except Exception as e:  # noqa: BLE001
        bad = duck_error_is_bad(e, classes) or judge(expect, "error", "22000")
    assert bad is None, f"{why}: {sql} -> {bad}"

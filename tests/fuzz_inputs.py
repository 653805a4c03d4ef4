"""What tests/test_fuzz.py throws and what it expects back.

Random arguments: each an ``Arg`` holding the SQL literal (PostgreSQL or DuckDB) and the Python
value it stands for (None for NULL), so that a failing call is printed as SQL anyone can replay.
The world the functions read (``World``: a table with a code store, codebooks, a TT model, FFN
layers) and its exact answers (``oracle``, ``readers``), the damage done to bitpress's tables
(``damage``), and ``judge``, which compares an outcome with what was expected."""
from __future__ import annotations

import dataclasses
import math
import random

import numpy as np

D = 12  # dimensions of the world's vectors, codebooks and layer; its codes have D bits
NAMES = {  # names of the world's objects per parameter name, plus missing ones
    "codebook": ["fz_sign", "fz_mean", "nope"], "model": ["fz_model", "nope"],
    "tensor": ["w", "bias", "cube", "nope"], "layer": ["fz_layer", "fz_layer8", "nope"],
    "store": ["fz_store", "nope"], "metric": ["cosine", "ip", "l2", "L2"],
    "scoring": ["hamming", "asymmetric", "nope"], "selector": ["predictor", "exact", "nope"],
    "tbl": ["fz_items", "nope"], "books": ["bitpress.codebooks", "nope"],
}
for _c in ("code_column", "vector_column", "id_column"):
    NAMES[_c] = ["code", "v", "id", "nope"]
ODD_TEXT = ["", "a'b", 'x"y', "ü€", "a" * 300, "FZ_SIGN", " fz_sign", "fz_sign\\"]
FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-45, 3.4e38, -3.4e38, 1e30, math.nan, math.inf, -math.inf]
INTS = [0, 1, -1, 2, 3, D, D + 1, 100, 2**31 - 1, -2**31]
BIGINTS = INTS + [2**63 - 1, -2**63, 2**32]


@dataclasses.dataclass
class Arg:
    sql: str
    value: object  # None: NULL


def f32(x: float) -> float:
    return float(np.float32(x)) if math.isfinite(x) and abs(x) < 3.4e38 else x


def rand_float(rng: random.Random, special: float = 0.1) -> float:
    if rng.random() < special:
        return rng.choice(FLOATS)
    return f32(rng.gauss(0, 1) * rng.choice([1, 1, 1, 1e-3, 1e6]))


def rand_floats(rng: random.Random, finite: bool = False) -> list[float]:
    n = rng.choice([0, 1, 2, 3, D - 1, D, D, D, D + 1, rng.randint(1, 40)])
    return [rand_float(rng, 0.0 if finite else 0.05) for _ in range(n)]


def rand_bits(rng: random.Random, lens=(0, 1, 3, 7, 8, 9, D, D, D, 16, 64, 65)) -> str:
    return "".join(rng.choice("01") for _ in range(rng.choice(lens)))


def _fnum(x: float, duck: bool) -> str:
    if math.isnan(x):
        return "'nan'::FLOAT" if duck else "NaN"
    if math.isinf(x):
        return ("'inf'::FLOAT" if x > 0 else "'-inf'::FLOAT") if duck else ("Infinity" if x > 0 else "-Infinity")
    return repr(x)


def floats_sql(xs, duck: bool, lower: int = 1) -> str:
    if duck:
        return "[" + ", ".join(_fnum(x, True) for x in xs) + "]::FLOAT[]"
    body = "{" + ",".join("NULL" if x is None else _fnum(x, False) for x in xs) + "}"
    return f"'{'' if lower == 1 else f'[{lower}:{lower + len(xs) - 1}]='}{body}'::real[]"


def vector_sql(xs) -> str:
    return "'[" + ",".join(_fnum(x, False) for x in xs) + "]'::vector"


def bits_sql(s: str, duck: bool) -> str:
    return blob_sql(pack(s), True) if duck else f"B'{s}'::varbit"


def signs_sql(s: str) -> str:
    """DuckDB: the code with bits s, as binarize makes it (1 where the value is > 0)."""
    return "binarize([" + ", ".join("1.0" if c == "1" else "-1.0" for c in s) + "]::FLOAT[])"


def blob_sql(b: bytes, duck: bool) -> str:
    if duck:
        return "'" + "".join(f"\\x{c:02x}" for c in b) + "'::BLOB"
    return f"'\\x{b.hex()}'::bytea"


def text_sql(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def pack(s: str) -> bytes:
    """A bit string's bytes as PostgreSQL stores them: MSB first, zero padding at the end."""
    return bytes(np.packbits(np.array([c == "1" for c in s], dtype=bool))) if s else b""


def text_value(rng: random.Random, pname: str) -> str:
    pool = NAMES.get(pname)
    if pool and rng.random() < 0.8:
        return rng.choice(pool)
    return rng.choice(ODD_TEXT + sum(NAMES.values(), []))


def rand_arg(rng: random.Random, typ: str, pname: str = "", duck: bool = False) -> Arg:
    """A random argument of SQL type ``typ`` (PostgreSQL's format_type names; DuckDB's are
    mapped onto them by the caller), NULL one time in ten."""
    null = rng.random() < 0.1
    if typ == "BLOB-code":  # DuckDB: a code made by binarize (whatever its representation), or raw bytes
        s = rand_bits(rng)
        if null:
            return Arg("NULL::BLOB", None)
        if s and rng.random() < 0.8:
            return Arg(signs_sql(s), s)
        return Arg(blob_sql(pack(s), True), ("raw", s))
    if typ in ("bit varying", "bit"):
        s = rand_bits(rng)
        return Arg(("NULL::BLOB" if duck else "NULL::varbit") if null else bits_sql(s, duck), None if null else s)
    if typ in ("bytea", "BLOB"):
        n = rng.choice([0, 1, 2, 4, 7, 8, 12, 16, 24, rng.randint(0, 64)])
        b = bytes(rng.getrandbits(8) for _ in range(n))
        return Arg(("NULL::BLOB" if duck else "NULL::bytea") if null else blob_sql(b, duck), None if null else b)
    if typ == "vector" and not duck:
        xs = rand_floats(rng)
        return Arg("NULL::vector" if null else vector_sql(xs), None if null else xs)
    if typ in ("halfvec", "sparsevec"):  # pgvector's casts from vector (a halfvec rounds: no oracle)
        xs = rand_floats(rng)
        if null:
            return Arg(f"NULL::{typ}", None)
        return Arg(f"{vector_sql(xs)}::{typ}", ("halfvec", xs) if typ == "halfvec" else xs)
    if typ in ("vector", "real[]", "FLOAT[]", "double precision[]"):
        if null:
            return Arg("NULL::FLOAT[]" if duck else "NULL::real[]", None)
        xs = rand_floats(rng)
        shape = rng.random()
        if duck or shape < 0.8 or not xs:
            return Arg(floats_sql(xs, duck), xs)
        if shape < 0.9:
            lower = rng.choice([-3, 0, 2])
            return Arg(floats_sql(xs, False, lower), xs)
        if shape < 0.95 and len(xs) % 2 == 0:
            half = len(xs) // 2
            inner = lambda part: "{" + ",".join(_fnum(x, False) for x in part) + "}"  # noqa: E731
            return Arg(f"'{{{inner(xs[:half])},{inner(xs[half:])}}}'::real[]", ("2-D", xs))
        xs = xs[:]
        xs[rng.randrange(len(xs))] = None
        return Arg(floats_sql(xs, False), xs)
    if typ in ("integer", "smallint", "INTEGER", "bigint", "BIGINT"):
        pool = BIGINTS if typ.lower() == "bigint" else INTS
        v = rng.choice(pool) if rng.random() < 0.7 else rng.randint(-3, 70)
        if typ == "smallint":
            v = max(-32768, min(32767, v))
        cast = {"integer": "integer", "INTEGER": "INTEGER", "smallint": "smallint"}.get(typ, "bigint")
        return Arg(f"NULL::{cast}" if null else f"({v})::{cast}", None if null else v)
    if typ in ("real", "double precision", "FLOAT", "DOUBLE"):
        x = rand_float(rng, 0.3)
        return Arg(f"NULL::{typ}" if null else f"'{_fnum(x, False)}'::{typ}", None if null else x)
    if typ == "bigint[]":
        pool = ["'{}'", "'{1,2,3}'", "'{NULL}'", "'[-1:0]={1,2}'", "'{{1,2},{3,4}}'",
                "'{-9223372036854775808,9223372036854775807}'"]
        s = rng.choice(pool)
        return Arg("NULL::bigint[]" if null else f"{s}::bigint[]", None if null else s)
    if typ == "regclass":
        s = rng.choice(["'fz_items'", "'pg_class'", "'-'", "'99999999'::oid", "'bitpress.code_segments'",
                        "'fz_items_pkey'"])
        return Arg("NULL::regclass" if null else f"{s}::regclass", None if null else s)
    if typ == "anyelement":
        s = rng.choice(["NULL::fz_items", "NULL::fz_items", "NULL::integer", "NULL::bitpress.code_stores",
                        "(SELECT t FROM fz_items t LIMIT 1)"])
        return Arg(s, s)
    if typ == "internal":
        return Arg("NULL::internal", None)
    if typ in ("text", "VARCHAR", "character varying"):
        s = text_value(rng, pname)
        return Arg(("NULL::VARCHAR" if duck else "NULL::text") if null else text_sql(s), None if null else s)
    if typ == "text[]":
        return Arg("NULL::text[]" if null else "'{a,NULL}'::text[]", None)
    return Arg(f"NULL::{typ}", None)  # a type this file does not know: NULL at least


def parse_text(typ: str, s):
    """The Python value of a result's text form (PostgreSQL), for comparison with an oracle."""
    if s is None:
        return None
    if typ in ("bit varying", "bit", "text"):
        return s
    if typ == "bytea":
        return bytes.fromhex(s[2:])
    if typ in ("integer", "bigint", "smallint"):
        return int(s)
    if typ in ("real", "double precision"):
        return float(s)
    if typ == "vector":
        return [float(x) for x in s.strip("[]").split(",")] if s != "[]" else []
    if typ == "real[]":
        return s  # kept as text: tt_reconstruct's shape and bounds are part of the answer
    return s


def flat_floats(s: str) -> list[float]:
    """The numbers of an array's text form, flattened (bounds decoration removed)."""
    body = s.split("=", 1)[1] if s.startswith("[") and "=" in s else s
    nums = body.replace("{", " ").replace("}", " ").replace("[", " ").replace("]", " ").replace(",", " ").split()
    return [float(x) for x in nums]


def close(got, want, tol=1e-4, mag=0.0) -> bool:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return False
    scale = max(1.0, mag, float(np.max(np.abs(want))) if want.size else 0.0)
    return bool(np.all(np.abs(got - want) <= tol * scale))


# ---- expected outcomes ----
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
        """Hamming top k of a query of D bits, or (DuckDB's store of a BLOB column, read at the
        query's length) of up to the codes' byte count: their zero padding counts as bits."""
        rows = sorted((sum(a != b for a, b in zip(c + "0" * (len(q) - len(c)), q)), i)
                      for i, (_, c) in self.items.items() if c is not None)
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
    floats = [v for v, t in zip(vals, types) if t in ("vector", "sparsevec", "real[]") and isinstance(v, list)]
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
        # DuckDB's fz_store is over a BLOB column (2 bytes a code): as documented, a BLOB is read
        # at the length it meets, so a query of 13-16 bits is answered with the padding as bits
        blob_length = duck and D < len(q) <= 8 * ((D + 7) // 8)
        if store != "fz_store" or k < 1 or (len(q) != D and not blob_length):
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


# ---- bitpress's tables damaged ----
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
    # rows without a code are never candidates, with the store or (damaged) without it
    out.append(("bitpress_knn", f"SELECT id FROM bitpress_knn(NULL::fz_items, 'code', 'v', {xs}::vector, 3, 100)",
                value([(i,) for _, i in cos[:3]], strict=False)))
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

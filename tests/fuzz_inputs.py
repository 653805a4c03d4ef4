"""Random arguments for tests/test_fuzz.py: each is an ``Arg`` holding the SQL literal (for
PostgreSQL or DuckDB) and the Python value it stands for (None for NULL), so that a failing call
is printed as SQL anyone can replay and its exact answer can be computed in Python."""
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

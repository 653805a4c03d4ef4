"""The ``bitpress`` command: ``bitpress pg install``, ``bitpress pg status``, ``bitpress demo``,
``bitpress migrate``, ``bitpress fit``, ``bitpress eval``."""
from __future__ import annotations

import argparse
import sys


def _pg_install(args) -> int:
    from . import pg

    pg.install(args.pg_config, destdir=args.destdir, quiet=args.quiet)
    return 0


def _pg_status(args) -> int:
    from . import pg

    inst = pg.installed(args.pg_config)
    if inst is None:
        print(f"bitpress is not installed for {pg.find_pg_config(args.pg_config)}")
    else:
        print(f"bitpress {inst.version} installed for {inst.pg_version} ({inst.pg_config})")
        print(f"  library  {inst.library}{'' if inst.library.is_file() else '  (missing!)'}")
        print(f"  control  {inst.control}")
    code = 0 if inst is not None and inst.library.is_file() else 1
    if args.dsn:
        st = pg.server_status(args.dsn)
        print(f"server {st['server_version']} at the given DSN:")
        for name in ("vector", "bitpress"):
            e = st["extensions"].get(name)
            if e is None:
                print(f"  {name:8} not available")
                code = 1
            else:
                print(f"  {name:8} available {e['available']}, "
                      f"{'installed ' + e['installed'] if e['installed'] else 'not created in this database'}")
        if st["simd"]:
            print(f"  hamming kernel path: {st['simd']}")
    return code


def _demo(args) -> int:
    from . import demo

    return demo.main(args) or 0


def _connect(args):
    """psycopg connection (--dsn) or DuckDB connection (--duckdb PATH)."""
    if args.dsn:
        import psycopg
        from pgvector.psycopg import register_vector

        conn = psycopg.connect(args.dsn, autocommit=True)
        register_vector(conn)
        return conn
    from .duckdb import connect

    return connect(args.duckdb)


def _migrate(args) -> int:
    from . import schema

    conn = _connect(args)
    before = schema.current(conn)
    after = schema.upgrade(conn, args.revision)
    print(f"bitpress schema: {before or 'none'} -> {after} (head {schema.head()})")
    return 0


def _fit(args) -> int:
    import time

    from . import codebooks, schema

    conn = _connect(args)
    if schema.current(conn) is None:
        print(f"creating bitpress.codebooks (migration {schema.upgrade(conn)})")
    t0 = time.perf_counter()
    version, cb = codebooks.fit_table(conn, args.table, args.vector_col, args.name, args.method,
                                      args.bits, sample_size=args.sample, seed=args.seed,
                                      progress=None if not args.quiet else False)
    took = time.perf_counter() - t0
    print(f"codebook {args.name!r} version {version}: {cb.method}, {cb.dims} dims -> {cb.bits} bits "
          f"({cb.code_bytes} bytes, {cb.dims * 4 / cb.code_bytes:.0f}x smaller than float32), "
          f"fitted on {cb.options.get('sample_size', args.sample)} rows in {took:.1f} s")
    print(f"use it: SELECT binarize({args.vector_col}, '{args.name}') ...   "
          f"(or binarize(v, '{args.name}', {version}) to pin this version)")
    return 0


def _eval(args) -> int:
    from . import evaluate

    return evaluate.main(args) or 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="bitpress", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bitpress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    pgp = sub.add_parser("pg", help="build, install and inspect the PostgreSQL extension")
    pgsub = pgp.add_subparsers(dest="pg_command", required=True)
    inst = pgsub.add_parser("install", help="compile sql/ with PGXS and install it")
    inst.add_argument("--pg-config", help="pg_config of the target server (default: PostgreSQL 15's)")
    inst.add_argument("--destdir", help="stage the installation under this directory (DESTDIR)")
    inst.add_argument("--quiet", action="store_true")
    inst.set_defaults(func=_pg_install)
    st = pgsub.add_parser("status", help="is the extension installed, which version")
    st.add_argument("--pg-config")
    st.add_argument("--dsn", help="also ask this server which versions are available and created")
    st.set_defaults(func=_pg_status)

    dm = sub.add_parser("demo", help="embed real text, compress it and search it in DuckDB")
    try:
        from . import demo
    except ImportError:  # pragma: no cover - demo is part of the package
        demo = None
    if demo is not None:
        demo.add_arguments(dm)
    dm.set_defaults(func=_demo)

    def target(p):
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--dsn", help="PostgreSQL connection string")
        where.add_argument("--duckdb", metavar="PATH", help="DuckDB database file")

    mg = sub.add_parser("migrate", help="create or upgrade bitpress's tables (Alembic)")
    target(mg)
    mg.add_argument("--revision", default="head")
    mg.set_defaults(func=_migrate)

    ft = sub.add_parser("fit", help="fit a codebook on a sample of a table's vectors and store it")
    target(ft)
    ft.add_argument("--table", required=True, help="table (schema.table allowed)")
    ft.add_argument("--vector-col", required=True, help="vector (pgvector) or FLOAT[] column")
    ft.add_argument("--name", required=True, help="codebook name for binarize(v, 'name')")
    ft.add_argument("--method", default="median",
                    help="sign, mean, median, learned, matryoshka, hybrid, pca, itq, thermometer")
    ft.add_argument("--bits", type=int, help="output bits (methods that shorten the code)")
    ft.add_argument("--sample", type=int, default=50_000, help="rows sampled in SQL (default 50000)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--quiet", action="store_true", help="no progress bars")
    ft.set_defaults(func=_fit)

    ev = sub.add_parser("eval", help="recall and speed of each kind of code on your vectors")
    from . import evaluate
    evaluate.add_arguments(ev)
    ev.set_defaults(func=_eval)
    return parser


def main(argv=None) -> int:
    from .errors import BitpressError
    from .pg import InstallError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BitpressError, InstallError) as e:
        print(f"bitpress: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # database errors (bad table or column, connection refused)
        if type(e).__module__.split(".")[0] not in ("psycopg", "duckdb", "_duckdb"):
            raise
        print(f"bitpress: {str(e).strip()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

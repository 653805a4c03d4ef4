"""The ``bitpress`` command: ``bitpress pg install``, ``bitpress pg status``, ``bitpress demo``."""
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


if __name__ == "__main__":
    sys.exit(main())

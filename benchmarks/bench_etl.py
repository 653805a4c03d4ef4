"""What adopting bitpress costs on a real table: the sync trigger on inserts, the resumable
backfill against one plain UPDATE, and the embedding job against the model alone.

Data: the first N PyPI package summaries with their real MiniLM embeddings (384-d) from
../shared/data/pypi-minilm. Each figure is the median of --repeat runs, the variants of one
row measured in turn in the same run (these machines are shared and noisy).

- PostgreSQL load: COPY of N rows into ``documents`` without a code column, and with the
  code column and the sync trigger of ``op.add_code_column`` (which codes every row).
- PostgreSQL fill: one ``UPDATE documents SET code = binarize(embedding, 'docs_v1', 1)``
  (what a user would otherwise write: one transaction that locks every row until it ends)
  against ``bitpress backfill`` (committed batches of --batch-size rows, resumable), and a
  second backfill pass over rows already right (it writes nothing).
- DuckDB fill: the same two on a DuckDB file.
- Embedding: ``Embedder.encode`` alone against ``bitpress embed`` writing into DuckDB and
  PostgreSQL (--texts rows).

    python benchmarks/bench_etl.py [--n 50000] [--repeat 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
import sqlalchemy as sa
from pgvector.psycopg import register_vector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import close_postgresql, log, unwind_on_signals  # noqa: E402

from bitpress import codebooks, etl, ops, schema  # noqa: E402
from bitpress import sa as bsa  # noqa: E402
from bitpress.sparse import shared_data_dir  # noqa: E402


def load_docs(n):
    d = shared_data_dir() / "pypi-minilm"
    texts = []
    with open(d / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == n:
                break
    x = np.load(d / "corpus.npy", mmap_mode="r")[:n].astype(np.float32)
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} rows in {d}")
    return texts, x


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def copy_rows(conn, texts, x):
    with conn.cursor().copy("COPY documents (id, body, embedding) FROM STDIN WITH (FORMAT BINARY)") as cp:
        cp.set_types(["int8", "text", "vector"])
        for i in range(len(texts)):
            cp.write_row([i, texts[i], x[i]])


def engine_for(conn):
    info = conn.info
    return sa.create_engine("postgresql+psycopg://", poolclass=sa.pool.NullPool,
                            creator=lambda: psycopg.connect(info.dsn, password=info.password))


def bench_postgresql(args, texts, x, out):
    conn = None
    try:
        conn = psycopg.connect(args.dsn, autocommit=True)
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE EXTENSION IF NOT EXISTS bitpress")
        register_vector(conn)
        schema.upgrade(conn)
        conn.execute("DROP TABLE IF EXISTS documents")
        conn.execute("CREATE TABLE documents (id bigint PRIMARY KEY, body text, embedding vector(384))")
        copy_rows(conn, texts, x)
        codebooks.fit_table(conn, "documents", "embedding", "docs_v1", "median", progress=False)
        engine = engine_for(conn)
        n = len(texts)

        plain, synced = [], []
        for r in range(args.repeat):
            log(f"postgresql load, run {r + 1}/{args.repeat}")
            if r > 0:
                with engine.begin() as c:
                    ops.operations(c).drop_code_column("documents", "code")
            conn.execute("TRUNCATE documents")
            plain.append(timed(lambda: copy_rows(conn, texts, x)))
            conn.execute("TRUNCATE documents")
            with engine.begin() as c:
                ops.operations(c).add_code_column("documents", "embedding", "code", codebook="docs_v1")
            synced.append(timed(lambda: copy_rows(conn, texts, x)))
            coded = conn.execute("SELECT count(code) FROM documents").fetchone()[0]
            assert coded == n, f"the trigger coded {coded} of {n} rows"
        out["postgresql_load"] = {"rows": n, "copy_s": float(np.median(plain)),
                                  "copy_with_trigger_s": float(np.median(synced))}

        def reset():
            conn.execute("ALTER TABLE documents DISABLE TRIGGER USER")
            conn.execute("UPDATE documents SET code = NULL")
            conn.execute("ALTER TABLE documents ENABLE TRIGGER USER")
            conn.execute("VACUUM documents")

        one, batched, again = [], [], []
        for r in range(args.repeat):
            log(f"postgresql fill, run {r + 1}/{args.repeat}")
            reset()
            one.append(timed(lambda: conn.execute(
                "UPDATE documents SET code = binarize(embedding, 'docs_v1', 1)")))
            reset()
            batched.append(timed(lambda: etl.backfill(conn, "documents", "code", batch_size=args.batch_size,
                                                      restart=True, progress_bar=False)))
            again.append(timed(lambda: etl.backfill(conn, "documents", "code", batch_size=args.batch_size,
                                                    restart=True, progress_bar=False)))
        wrong = conn.execute("SELECT count(*) FROM documents WHERE code IS DISTINCT FROM "
                             "binarize(embedding, 'docs_v1', 1)").fetchone()[0]
        assert wrong == 0, f"{wrong} rows with a wrong code after the backfill"
        out["postgresql_fill"] = {"rows": n, "one_update_s": float(np.median(one)),
                                  "backfill_s": float(np.median(batched)),
                                  "backfill_again_s": float(np.median(again))}
        conn.execute("DROP TABLE documents")
        engine.dispose()
    finally:
        close_postgresql([conn], None)


def bench_duckdb(args, texts, x, out):
    import pyarrow as pa

    import bitpress.duckdb

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "docs.duckdb")
        con = bitpress.duckdb.connect(path)
        if args.duckdb_threads:
            con.execute(f"SET threads = {int(args.duckdb_threads)}")
        schema.upgrade(con)
        con.execute("CREATE TABLE documents (id BIGINT PRIMARY KEY, body VARCHAR, embedding FLOAT[384])")
        src = pa.table({"id": pa.array(range(len(texts)), pa.int64()), "body": texts,
                        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 384)})
        con.register("src", src)
        con.execute("INSERT INTO documents SELECT * FROM src")
        codebooks.fit_table(con, "documents", "embedding", "docs_v1", "median", progress=False)
        con.execute("ALTER TABLE documents ADD COLUMN code BLOB")
        one, batched, again = [], [], []
        for r in range(args.repeat):
            log(f"duckdb fill, run {r + 1}/{args.repeat}")
            con.execute("UPDATE documents SET code = NULL")
            one.append(timed(lambda: con.execute("UPDATE documents SET code = binarize(embedding, 'docs_v1', 1)")))
            con.execute("UPDATE documents SET code = NULL")
            batched.append(timed(lambda: etl.backfill(con, "documents", "code", "embedding", "docs_v1", 1,
                                                      batch_size=args.batch_size, restart=True, progress_bar=False)))
            again.append(timed(lambda: etl.backfill(con, "documents", "code", "embedding", "docs_v1", 1,
                                                    batch_size=args.batch_size, restart=True, progress_bar=False)))
        out["duckdb_fill"] = {"rows": len(texts), "one_update_s": float(np.median(one)),
                              "backfill_s": float(np.median(batched)), "backfill_again_s": float(np.median(again))}
        con.close()


def bench_embed(args, texts, out, dsn):
    import bitpress.duckdb
    from bitpress.embed import Embedder

    texts = texts[:args.texts]
    emb = Embedder(batch_size=64)
    emb.encode(texts[:64])  # warm-up
    alone, duck, pg = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        con = bitpress.duckdb.connect(os.path.join(tmp, "e.duckdb"))
        schema.upgrade(con)
        con.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, body VARCHAR, v FLOAT[384])")
        con.executemany("INSERT INTO t VALUES (?, ?, NULL)", list(enumerate(texts)))
        pgc = None
        if dsn:
            pgc = psycopg.connect(dsn, autocommit=True)
            pgc.execute("DROP TABLE IF EXISTS embed_t")
            pgc.execute("CREATE TABLE embed_t (id bigint PRIMARY KEY, body text, v vector(384))")
            with pgc.cursor().copy("COPY embed_t (id, body) FROM STDIN") as cp:
                for i, t in enumerate(texts):
                    cp.write_row([i, t])
        for r in range(args.repeat):
            log(f"embedding, run {r + 1}/{args.repeat}")
            alone.append(timed(lambda: emb.encode(texts)))
            duck.append(timed(lambda: etl.embed(con, "t", "body", "v", emb, batch_size=256, overwrite=True,
                                                restart=True, progress_bar=False)))
            if pgc is not None:
                pg.append(timed(lambda: etl.embed(pgc, "embed_t", "body", "v", emb, batch_size=256,
                                                  overwrite=True, restart=True, progress_bar=False)))
        con.close()
        if pgc is not None:
            pgc.execute("DROP TABLE embed_t")
            pgc.close()
    out["embedding"] = {"texts": len(texts), "encode_s": float(np.median(alone)),
                        "embed_duckdb_s": float(np.median(duck)),
                        "embed_postgresql_s": float(np.median(pg)) if pg else None}


def report(out):
    rows = []
    if "postgresql_load" in out:
        p = out["postgresql_load"]
        rows.append(("PostgreSQL: COPY rows in", f"with sync trigger {p['copy_with_trigger_s']:.2f} s",
                     f"without {p['copy_s']:.2f} s", f"{p['copy_with_trigger_s'] / p['copy_s']:.2f}x the time"))
    for key, name in (("postgresql_fill", "PostgreSQL"), ("duckdb_fill", "DuckDB")):
        if key in out:
            p = out[key]
            rows.append((f"{name}: code {p['rows']:,} existing rows", f"backfill {p['backfill_s']:.2f} s "
                         f"(again: {p['backfill_again_s']:.2f} s)", f"one UPDATE {p['one_update_s']:.2f} s",
                         f"{p['backfill_s'] / p['one_update_s']:.2f}x the time"))
    if "embedding" in out:
        p = out["embedding"]
        rows.append((f"embed {p['texts']:,} texts into DuckDB", f"bitpress embed {p['embed_duckdb_s']:.2f} s",
                     f"Embedder.encode alone {p['encode_s']:.2f} s", f"{p['embed_duckdb_s'] / p['encode_s']:.2f}x"))
        if p["embed_postgresql_s"]:
            rows.append((f"embed {p['texts']:,} texts into PostgreSQL",
                         f"bitpress embed {p['embed_postgresql_s']:.2f} s",
                         f"Embedder.encode alone {p['encode_s']:.2f} s",
                         f"{p['embed_postgresql_s'] / p['encode_s']:.2f}x"))
    head = ("task", "bitpress", "the alternative", "ratio")
    print("| " + " | ".join(head) + " |\n| " + " | ".join("---" for _ in head) + " |")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50_000, help="rows (PyPI summaries), default 50000")
    ap.add_argument("--texts", type=int, default=2000, help="texts for the embedding job (2000)")
    ap.add_argument("--batch-size", type=int, default=2000, help="backfill batch size (2000)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dsn", help="a PostgreSQL server with pgvector and bitpress (default: a throwaway cluster)")
    ap.add_argument("--duckdb-threads", type=int, default=0)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    unwind_on_signals()
    texts, x = load_docs(args.n)
    out = {"n": args.n, "batch_size": args.batch_size, "repeat": args.repeat, "cpu_count": os.cpu_count()}
    from _pgserver import ThrowawayPostgres

    server = None
    try:
        if not args.dsn:
            server = ThrowawayPostgres(settings={"shared_buffers": "'1GB'", "max_parallel_workers_per_gather": 0})
            log(f"postgresql: starting a throwaway cluster ({server.bindir}) ...")
            server.start()
            args.dsn = server.dsn
        bench_postgresql(args, texts, x, out)
        bench_duckdb(args, texts, x, out)
        bench_embed(args, texts, out, args.dsn)
    finally:
        close_postgresql([], server)
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()

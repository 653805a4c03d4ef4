"""bitpress.index (create / status / drop), `bitpress index ...`, bitpress.sa.ivf_index and the
Alembic op.create_ivf_index / op.drop_ivf_index, on real MiniLM rows against exact search."""
from __future__ import annotations

import json
import re

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
from pgvector import HalfVector
from psycopg import sql

from bitpress import errors, index, ivf, ops
from bitpress.tables import pg_ident
from conftest import ROOT, load_shared, run_cli

N = 5000
SCHEMA, TABLE, COLUMN = "Odd Schema", 'My "Docs"', "emb %s"


@pytest.fixture(scope="module")
def data():
    return (load_shared("pypi-minilm", "corpus.npy")[:N].copy(),
            load_shared("pypi-minilm", "queries.npy")[:40].copy())


def load(pg, x, table=("public", "t"), column="v", typ="vector"):
    """``table (id int primary key, column typ(d), body text)`` holding the rows of x."""
    t, c = sql.Identifier(*table), sql.Identifier(column)
    pg.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, {} {}({}), body text)").format(
        t, c, sql.SQL(typ), sql.Literal(x.shape[1])))
    with pg.cursor().copy(sql.SQL("COPY {} (id, {}) FROM STDIN WITH (FORMAT BINARY)").format(t, c)) as cp:
        cp.set_types(["int4", typ])
        for i, v in enumerate(x):
            cp.write_row([i, HalfVector(v) if typ == "halfvec" else v])


def exact_top(x, q, metric="cosine", k=10):
    return set(np.argsort(ivf.distance(x, q, metric), kind="stable")[:k].tolist())


def knn_sql(table, column, metric="cosine", cast="vector"):
    # executed with a parameter: pg_ident doubles a % inside a name
    return sql.SQL("SELECT id FROM {t} ORDER BY {c} {op} %s::{cast} LIMIT 10").format(
        t=pg_ident(*table), c=pg_ident(column), op=sql.SQL(index.METRICS[metric]), cast=sql.SQL(cast))


def recall(pg, x, queries, table, column, metric="cosine", cast="vector"):
    q_sql = knn_sql(table, column, metric, cast)
    hits = sum(len({r[0] for r in pg.execute(q_sql, (q,))} & exact_top(x, q, metric)) for q in queries)
    return hits / (10 * len(queries))


def uses(pg, table, column, index_name, metric="cosine", cast="vector"):
    plan = "\n".join(r[0] for r in pg.execute(sql.SQL("EXPLAIN ") + knn_sql(table, column, metric, cast),
                                              (np.ones(384, np.float32),)))
    quoted = pg.execute("SELECT quote_ident(%s)", (index_name,)).fetchone()[0]  # as EXPLAIN quotes it
    return f"Index Scan using {quoted} " in plan


def test_create_status_drop_with_odd_names_answers_like_exact_search(pg, data):
    x, queries = data
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    load(pg, x, (SCHEMA, TABLE), COLUMN)
    st = index.create(pg, f"{SCHEMA}.{TABLE}", COLUMN, lists=70, bits=1)
    # PostgreSQL chose the name; the status names it, quoted and schema-qualified
    name = pg.execute("SELECT relname FROM pg_class WHERE oid = %s", (st.index_oid,)).fetchone()[0]
    assert name == 'My "Docs"_emb %s_idx'
    assert st.index == '"Odd Schema"."My ""Docs""_emb %s_idx"'
    assert st.table == '"Odd Schema"."My ""Docs"""'
    assert st.table_oid == pg.execute("SELECT %s::regclass::oid", ('"Odd Schema"."My ""Docs"""',)).fetchone()[0]
    assert (st.column, st.type, st.opclass, st.metric, st.lists, st.bits, st.valid, st.rows, st.progress) == \
        (COLUMN, "vector", "bitpress_cosine_ops", "cosine", 70, 1, True, N, None)
    assert st.size_bytes == pg.execute("SELECT pg_relation_size(%s)", (st.index_oid,)).fetchone()[0]
    # 5000 codes of 48 + 32 bytes and 70 centroids: more than 400 kB, far less than the vectors
    assert 400_000 < st.size_bytes < N * 1544 / 3
    assert index.status(pg) == [st] == index.status(pg, (SCHEMA, TABLE))

    t = (SCHEMA, TABLE)
    assert uses(pg, t, COLUMN, name)
    pg.execute("SET bitpress.probes = 24")
    r = recall(pg, x, queries, t, COLUMN)
    assert r >= 0.9, r

    # names as they are, "schema.name" (no SQL quoting)
    assert index.drop(pg, f"{SCHEMA}.{name}") == [st.index]
    assert index.status(pg) == []
    assert not uses(pg, t, COLUMN, name)


def test_options_defaults_and_several_indexes(pg, data):
    x, _ = data
    load(pg, x[:2000])
    a = index.create(pg, "t", "v", name="t_default")
    b = index.create(pg, "public.t", "v", metric="l2", lists=20, bits=2, name="t_l2")
    # an index made without lists has the index's default: the one docs/INDEX.md gives
    doc_default = re.search(r"\| `lists` \(index option\) \| (\d+) \|", (ROOT / "docs" / "INDEX.md").read_text())
    assert a.lists == index.DEFAULT_LISTS == int(doc_default.group(1)) == 100
    assert pg.execute("SELECT reloptions FROM pg_class WHERE relname = 't_default'").fetchone()[0] == ["bits=1"]
    c = index.create(pg, "t", "v", bits=None, name="t_none")  # no WITH at all: both defaults
    assert pg.execute("SELECT reloptions FROM pg_class WHERE relname = 't_none'").fetchone()[0] is None
    assert (c.lists, c.bits) == (100, 1)
    index.drop(pg, "t_none")
    assert (b.opclass, b.metric, b.lists, b.bits) == ("bitpress_l2_ops", "l2", 20, 2)
    assert [s.index for s in index.status(pg, "t")] == ["public.t_default", "public.t_l2"]
    # IF NOT EXISTS: the existing index, unchanged
    again = index.create(pg, "t", "v", metric="ip", name="t_l2", if_not_exists=True)
    assert again == b
    pg.execute("CREATE INDEX t_btree ON t (id)")
    with pytest.raises(errors.BitpressError, match="not a bitpress_ivf index") as ei:
        index.create(pg, "t", "v", name="t_btree", if_not_exists=True)
    assert ei.value.sqlstate == "42P07"
    # a table: every bitpress_ivf index on it goes, nothing else
    with pytest.raises(errors.BitpressError, match="is a btree index") as ei:
        index.drop(pg, "t_btree")
    assert ei.value.sqlstate == "42809"
    assert index.drop(pg, "t", concurrently=True) == ["public.t_default", "public.t_l2"]
    assert index.status(pg) == []
    assert pg.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 't'").fetchone()[0] == 2  # pkey, btree
    assert index.drop(pg, "t") == []
    assert index.drop(pg, "nope", if_exists=True) == []
    with pytest.raises(errors.UndefinedTableError) as ei:
        index.drop(pg, "nope")
    assert ei.value.sqlstate == "42P01"


def test_concurrently_and_an_sqlalchemy_connection(pg, data, pg_engine):
    x, queries = data
    load(pg, x[:3000])
    st = index.create(pg, "t", "v", lists=50, concurrently=True, name="t_conc")
    assert st.valid and st.lists == 50 and st.rows == 3000
    with pg_engine.begin() as c:
        assert [s.index for s in index.status(c)] == ["public.t_conc"]
        index.drop(c, "t_conc")
        index.create(c, "t", "v", metric="ip", lists=30, name="t_ip")
    assert [(s.index, s.metric) for s in index.status(pg)] == [("public.t_ip", "ip")]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_halfvec_columns_get_the_halfvec_classes(pg, data, metric):
    x, queries = data
    x = x.astype(np.float16).astype(np.float32)
    load(pg, x, typ="halfvec")
    st = index.create(pg, "t", "v", metric=metric, lists=70)
    assert (st.type, st.opclass, st.metric) == ("halfvec", f"bitpress_halfvec_{metric}_ops", metric)
    assert uses(pg, ("public", "t"), "v", "t_v_idx", metric, "halfvec")
    pg.execute("SET bitpress.probes = 24")
    qh = queries.astype(np.float16).astype(np.float32)
    r = recall(pg, x, qh, ("public", "t"), "v", metric, "halfvec")
    assert r >= 0.9, r


@pytest.mark.parametrize("table, column, kw, cls, sqlstate, match", [
    ("nope", "v", {}, errors.UndefinedTableError, "42P01", 'relation "nope" does not exist'),
    ("nosuch.t", "v", {}, errors.UndefinedTableError, "42P01", 'relation "nosuch.t" does not exist'),
    ("T", "v", {}, errors.UndefinedTableError, "42P01", 'relation "T" does not exist'),  # names as written
    ("t", "w", {}, errors.UndefinedColumnError, "42703", 'column "w" of relation "public.t" does not exist'),
    ("t", "body", {}, errors.DatatypeMismatchError, "42804", "is of type text: bitpress_ivf indexes vector"),
    ("t", "id", {}, errors.DatatypeMismatchError, "42804", "is of type int4"),
    ("t", "v", {"metric": "dot"}, errors.InvalidParameterError, "22023", "metric must be cosine, l2 or ip"),
    ("t", "v", {"lists": "7"}, errors.InvalidParameterError, "22023", "lists must be an integer"),
    ("t", "v", {"if_not_exists": True}, errors.InvalidParameterError, "22023", "needs the index's name"),
])
def test_bad_input_is_refused_with_its_sqlstate(pg, data, table, column, kw, cls, sqlstate, match):
    load(pg, data[0][:100])
    with pytest.raises(cls, match=match) as ei:
        index.create(pg, table, column, **kw)
    assert ei.value.sqlstate == sqlstate
    if cls is errors.UndefinedTableError:
        with pytest.raises(cls, match=match):
            index.status(pg, table)
    assert index.status(pg) == []


def test_out_of_range_options_are_postgresqls_errors(pg, data):
    load(pg, data[0][:100])
    with pytest.raises(psycopg.errors.InvalidParameterValue) as ei:
        index.create(pg, "t", "v", bits=5)
    assert ei.value.sqlstate == "22023"
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        index.create(pg, "t", "v", lists=0)
    assert index.status(pg) == []


def test_progress_is_read_from_a_second_connection_while_it_builds(pg, pg_test_dsn):
    x = load_shared("pypi-minilm", "corpus.npy")[:30000]
    load(pg, x)
    seen, listed = [], []
    watcher = psycopg.connect(pg_test_dsn, autocommit=True)

    def on_progress(p):
        seen.append(p)
        if not listed:  # what status() shows another session meanwhile
            listed.extend(index.status(watcher))

    st = index.create(pg, "t", "v", lists=150, on_progress=on_progress, poll=0.02)
    watcher.close()
    phases = [p.phase for p in seen]
    assert all(p.pid == pg.info.backend_pid and p.command == "CREATE INDEX" for p in seen)
    assert set(phases) <= {"initializing", "building index: initializing", "building index: sampling rows",
                           "building index: performing k-means", "building index: coding rows"}, phases
    assert "building index: coding rows" in phases, phases
    table_blocks = pg.execute("SELECT pg_relation_size('t') / current_setting('block_size')::int").fetchone()[0]
    assert all(p.blocks_done <= p.blocks_total == table_blocks for p in seen if p.blocks_total)
    coding = [p for p in seen if p.phase.endswith("coding rows")]
    assert all(p.tuples_total == 30000 and p.tuples_done <= 30000 for p in coding)
    # the uncommitted index is not in the other session's catalog (nor its OID): listed with its progress
    assert len(listed) == 1 and listed[0].index is None and listed[0].index_oid is None
    assert listed[0].table == "public.t" and listed[0].progress.pid == pg.info.backend_pid
    assert st.valid and st.rows == 30000 and st.progress is None


def test_a_build_can_be_interrupted(pg, data):
    x = load_shared("pypi-minilm", "corpus.npy")[:30000]
    load(pg, x)

    def stop(p):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        index.create(pg, "t", "v", lists=150, on_progress=stop, poll=0.02)
    assert index.status(pg) == []
    assert pg.execute("SELECT count(*) FROM pg_stat_progress_create_index").fetchone()[0] == 0


def test_a_concurrent_build_is_listed_not_valid_until_it_is_done(pg, pg_test_dsn):
    load(pg, load_shared("pypi-minilm", "corpus.npy")[:30000])
    watcher = psycopg.connect(pg_test_dsn, autocommit=True)
    listed = []

    def on_progress(p):
        if p.phase.startswith("building index: ") and not listed:
            listed.extend(index.status(watcher, "t"))

    st = index.create(pg, "t", "v", lists=150, name="t_cc", concurrently=True, on_progress=on_progress, poll=0.02)
    watcher.close()
    # CONCURRENTLY: the index is in the catalog from the start, not valid, its progress joined by OID
    (during,) = listed
    assert (during.index, during.index_oid, during.valid, during.lists) == ("public.t_cc", st.index_oid, False, 150)
    assert during.progress.command == "CREATE INDEX CONCURRENTLY"
    assert during.progress.phase.startswith("building index: ")
    assert st.valid and st.rows == 30000
    index.drop(pg, "t_cc")

    # interrupted, CREATE INDEX CONCURRENTLY leaves an invalid index: status says so, drop removes it
    def stop(p):
        if p.phase.startswith("building index: "):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        index.create(pg, "t", "v", lists=150, name="t_cc", concurrently=True, on_progress=stop, poll=0.02)
    (left,) = index.status(pg)
    assert (left.index, left.valid, left.progress) == ("public.t_cc", False, None)
    assert not uses(pg, ("public", "t"), "v", "t_cc")
    assert index.drop(pg, left.index_oid) == ["public.t_cc"]
    assert index.status(pg) == []


def test_cli_create_status_drop(pg, data, pg_test_dsn):
    x, queries = data
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    load(pg, x, (SCHEMA, TABLE), COLUMN)
    out = run_cli("index", "create", f"{SCHEMA}.{TABLE}", COLUMN, "--lists", "70", "--name", "ix %s",
                  "--verbose", "--dsn", pg_test_dsn)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('index "Odd Schema"."ix %s" on "Odd Schema"."My ""Docs""" '
                                 "(emb %s bitpress_cosine_ops): 70 lists, 1 bit(s), 5000 rows")
    assert "use it: SET bitpress.probes = 10; SELECT ... ORDER BY \"emb %s\" <=> :q LIMIT 10" in out.stdout
    js = run_cli("index", "status", f"{SCHEMA}.{TABLE}", "--json", "--dsn", pg_test_dsn)
    assert js.returncode == 0, js.stderr
    (row,) = json.loads(js.stdout)
    assert {k: row[k] for k in ("index", "column", "type", "opclass", "metric", "lists", "bits", "rows", "valid",
                                "progress")} == {
        "index": '"Odd Schema"."ix %s"', "column": COLUMN, "type": "vector", "opclass": "bitpress_cosine_ops",
        "metric": "cosine", "lists": 70, "bits": 1, "rows": 5000, "valid": True, "progress": None}
    assert row["size_bytes"] > 400_000
    text = run_cli("index", "status", "--dsn", pg_test_dsn)
    assert text.stdout.startswith('"Odd Schema"."ix %s" on "Odd Schema"."My ""Docs""" (emb %s bitpress_cosine_ops): '
                                  "70 lists, 1 bit(s), 5000 rows")
    pg.execute("SET bitpress.probes = 24")
    assert uses(pg, (SCHEMA, TABLE), COLUMN, "ix %s")
    assert recall(pg, x, queries, (SCHEMA, TABLE), COLUMN) >= 0.9

    dr = run_cli("index", "drop", f"{SCHEMA}.ix %s", "--concurrently", "--dsn", pg_test_dsn)
    assert dr.returncode == 0 and dr.stdout.strip() == 'dropped "Odd Schema"."ix %s"', dr.stdout + dr.stderr
    assert run_cli("index", "status", "--dsn", pg_test_dsn).stdout.strip() == "no bitpress_ivf index"
    assert run_cli("index", "drop", "nope", "--if-exists", "--dsn", pg_test_dsn).stdout.strip() == \
        "nothing to drop: no nope"
    for args, msg in ((["drop", "nope"], 'relation "nope" does not exist'),
                      (["create", f"{SCHEMA}.{TABLE}", "body"], "is of type text"),
                      (["create", "missing", "v"], 'relation "missing" does not exist'),
                      (["create", f"{SCHEMA}.{TABLE}", COLUMN, "--bits", "9"], "bits")):
        bad = run_cli("index", *args, "--dsn", pg_test_dsn)
        assert bad.returncode == 2 and msg in bad.stderr, (args, bad.stderr)
    assert index.status(pg) == []


def test_cli_create_prints_the_build_phases(pg, pg_test_dsn):
    load(pg, load_shared("pypi-minilm", "corpus.npy")[:30000])
    out = run_cli("index", "create", "t", "v", "--lists", "150", "--verbose", "--dsn", pg_test_dsn)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    blocks = pg.execute("SELECT pg_relation_size('t') / current_setting('block_size')::int").fetchone()[0]
    # one line per phase seen, read from a second connection while the build ran
    assert lines and len(lines) == len(set(lines))
    assert any(re.fullmatch(rf"building index: coding rows: [\d,]+/{blocks:,} blocks, [\d,]+/30,000 rows", ln)
               for ln in lines), lines
    assert out.stdout.startswith("index public.t_v_idx on public.t (v bitpress_cosine_ops): 150 lists, 1 bit(s), "
                                 "30000 rows")


def test_cli_draws_a_bar_on_a_terminal(pg, pg_test_dsn):
    """On a terminal (script(1) gives one, of 120 columns) the build's blocks are a tqdm bar."""
    import shlex
    import shutil
    import sys

    if shutil.which("script") is None:
        pytest.fail("script(1) (util-linux) is needed to run the CLI on a terminal")
    load(pg, load_shared("pypi-minilm", "corpus.npy")[:30000])
    cmd = "stty cols 120 rows 30; " + shlex.join([sys.executable, "-m", "bitpress", "index", "create", "t", "v",
                                                  "--lists", "150", "--dsn", pg_test_dsn])
    import subprocess

    out = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, timeout=300)
    screen = out.stdout.decode()
    assert out.returncode == 0, screen
    blocks = pg.execute("SELECT pg_relation_size('t') / current_setting('block_size')::int").fetchone()[0]
    assert re.search(rf"building index: coding rows: +\d+%\|.*\| \d+/{blocks} \[", screen), screen
    assert "index public.t_v_idx on public.t (v bitpress_cosine_ops): 150 lists" in screen


def test_cli_ctrl_c_cancels_the_build_and_names_an_invalid_index(pg, pg_test_dsn):
    import signal
    import subprocess
    import sys

    load(pg, load_shared("pypi-minilm", "corpus.npy")[:30000])
    proc = subprocess.Popen([sys.executable, "-m", "bitpress", "index", "create", "t", "v", "--lists", "150",
                             "--concurrently", "--verbose", "--dsn", pg_test_dsn],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # wait until the build itself runs
        if line.startswith("building index: "):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted, the build was cancelled; CREATE INDEX CONCURRENTLY left public.t_v_idx INVALID: " \
           "drop it with `bitpress index drop public.t_v_idx`" in err
    (left,) = index.status(pg)
    assert (left.index, left.valid, left.progress) == ("public.t_v_idx", False, None)
    assert pg.execute("SELECT count(*) FROM pg_stat_progress_create_index").fetchone()[0] == 0
    assert run_cli("index", "drop", "public.t_v_idx", "--dsn", pg_test_dsn).returncode == 0
    assert index.status(pg) == []


# --- SQLAlchemy and Alembic ----------------------------------------------------------------

def test_sqlalchemy_ivf_index_is_made_by_create_all_and_used(pg, data, pg_engine):
    from pgvector.sqlalchemy import HALFVEC, Vector
    from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

    from bitpress import sa as bp

    x, queries = data

    class Base(DeclarativeBase):
        pass

    class Doc(Base):
        __tablename__ = 'My "Docs"'
        __table_args__ = (bp.ivf_index("docs_ivf", "embedding", lists=70),
                          bp.ivf_index("docs_half_l2", "half", metric="l2", lists=20, bits=2),
                          {"schema": SCHEMA})
        id = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
        embedding = mapped_column(Vector(384))
        half = mapped_column(HALFVEC(384))

    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    Base.metadata.create_all(pg_engine)  # the table and its two indexes
    got = {s.index: (s.column, s.opclass, s.lists, s.bits, s.valid) for s in index.status(pg)}
    assert got == {'"Odd Schema".docs_ivf': ("embedding", "bitpress_cosine_ops", 70, 1, True),
                   '"Odd Schema".docs_half_l2': ("half", "bitpress_halfvec_l2_ops", 20, 2, True)}
    with Session(pg_engine) as s:
        s.add_all([Doc(id=i, embedding=v, half=HalfVector(v)) for i, v in enumerate(x)])
        s.commit()
    # built on an empty table, an index has one list: REINDEX once the rows are in (docs/INDEX.md)
    pg.execute(sql.SQL("REINDEX TABLE {}").format(sql.Identifier(SCHEMA, TABLE)))
    assert {s.index: s.rows for s in index.status(pg)} == {'"Odd Schema".docs_ivf': N, '"Odd Schema".docs_half_l2': N}
    assert uses(pg, (SCHEMA, TABLE), "embedding", "docs_ivf")
    assert uses(pg, (SCHEMA, TABLE), "half", "docs_half_l2", "l2", "halfvec")
    with Session(pg_engine) as s:
        s.execute(sa.text("SET bitpress.probes = 24"))
        hits = sum(len(set(s.scalars(sa.select(Doc.id).order_by(Doc.embedding.cosine_distance(q)).limit(10)))
                       & exact_top(x, q)) for q in queries)
    assert hits / (10 * len(queries)) >= 0.9, hits


def test_sqlalchemy_create_all_on_a_fresh_metadata(pg, pg_engine):
    from pgvector.sqlalchemy import HALFVEC, Vector
    from sqlalchemy.schema import CreateIndex

    from bitpress import sa as bp

    meta = sa.MetaData()
    col = sa.Column("e", Vector(3))
    t = sa.Table("fresh", meta, sa.Column("id", sa.Integer, primary_key=True), col, sa.Column("h", HALFVEC(3)))
    a = bp.ivf_index("fresh_e", col, metric="ip")
    b = bp.ivf_index("fresh_h", t.c.h, lists=4)
    assert str(CreateIndex(a).compile(pg_engine)) == \
        "CREATE INDEX fresh_e ON fresh USING bitpress_ivf (e bitpress_ip_ops) WITH (bits = 1)"
    assert str(CreateIndex(b).compile(pg_engine)) == \
        "CREATE INDEX fresh_h ON fresh USING bitpress_ivf (h bitpress_halfvec_cosine_ops) WITH (lists = 4, bits = 1)"
    with pytest.raises(errors.InvalidParameterError):
        bp.ivf_index("x", "e", metric="hamming")
    meta.create_all(pg_engine)
    assert {(s.index, s.metric, s.type) for s in index.status(pg)} == {
        ("public.fresh_e", "ip", "vector"), ("public.fresh_h", "cosine", "halfvec")}


def test_alembic_create_and_drop_ivf_index_with_reverse(pg, data, pg_engine):
    x, queries = data
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    load(pg, x, (SCHEMA, TABLE), COLUMN)
    create = ops.CreateIvfIndexOp("docs ivf", TABLE, COLUMN, metric="cosine", lists=70, bits=1, schema=SCHEMA)
    with pg_engine.begin() as c:
        ops.operations(c).create_ivf_index("docs ivf", TABLE, COLUMN, lists=70, schema=SCHEMA)
    (st,) = index.status(pg)
    assert (st.index, st.lists, st.bits, st.metric, st.valid, st.rows) == \
        ('"Odd Schema"."docs ivf"', 70, 1, "cosine", True, N)
    pg.execute("SET bitpress.probes = 24")
    assert uses(pg, (SCHEMA, TABLE), COLUMN, "docs ivf")
    assert recall(pg, x, queries, (SCHEMA, TABLE), COLUMN) >= 0.9
    # a failure later in the migration rolls the index back with it
    with pytest.raises(RuntimeError, match="later"):
        with pg_engine.begin() as c:
            ops.operations(c).invoke(create.reverse())
            assert index.status(c) == []
            raise RuntimeError("a later step failed")
    assert [s.index for s in index.status(pg)] == [st.index]
    # downgrade: the reverse drops it; the reverse of that makes it again, the same
    drop = create.reverse()
    assert isinstance(drop, ops.DropIvfIndexOp) and isinstance(drop.reverse(), ops.CreateIvfIndexOp)
    with pg_engine.begin() as c:
        ops.operations(c).invoke(drop)
    assert index.status(pg) == []
    with pg_engine.begin() as c:
        ops.operations(c).invoke(drop.reverse())
    (again,) = index.status(pg)
    assert (again.index, again.lists, again.bits, again.metric, again.rows) == (st.index, 70, 1, "cosine", N)
    with pg_engine.begin() as c:
        ops.operations(c).drop_ivf_index("docs ivf", schema=SCHEMA)
    assert index.status(pg) == []
    # a drop written without its definition cannot be reversed; a btree index is never dropped
    with pytest.raises(ValueError, match="table and column"):
        ops.DropIvfIndexOp("docs ivf", schema=SCHEMA).reverse()
    pg.execute(sql.SQL("CREATE INDEX b ON {} (id)").format(sql.Identifier(SCHEMA, TABLE)))
    with pytest.raises(errors.BitpressError, match="is a btree index") as ei:
        with pg_engine.begin() as c:
            ops.operations(c).drop_ivf_index("b", schema=SCHEMA)
    assert ei.value.sqlstate == "42809"
    with pytest.raises(errors.UndefinedColumnError):
        with pg_engine.begin() as c:
            ops.operations(c).create_ivf_index("i2", TABLE, "nope", schema=SCHEMA)


def test_index_md_from_python_runs_as_written(pg, data, pg_engine, pg_test_dsn):
    """docs/INDEX.md's "From Python" blocks, as written: the models, the migration, the CLI lines
    and the API, on 5000 real rows."""
    import shlex

    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    text = (ROOT / "docs" / "INDEX.md").read_text()
    part = text[text.index("## From Python\n"):text.index("## Measured\n")]
    blocks = re.findall(r"```(\w+)\n(.*?)```", part, re.S)
    assert [k for k, _ in blocks] == ["sh", "python", "python", "python"]
    (_, cli), (_, api), (_, models), (_, migration) = blocks
    x, queries = data

    # the models on an empty database: create_all makes the table and its index
    exec(models, {"engine": pg_engine, "__name__": "docs_models"})
    (st,) = index.status(pg)
    assert (st.index, st.table, st.opclass, st.lists, st.bits, st.valid) == \
        ("public.docs_embedding_ivf", "public.docs", "bitpress_cosine_ops", 224, 1, True)
    with pg.cursor().copy("COPY docs (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as cp:
        cp.set_types(["int8", "vector"])
        for i, v in enumerate(x):
            cp.write_row([i, v])
    pg.execute("REINDEX INDEX docs_embedding_ivf")
    assert index.status(pg)[0].rows == N
    assert uses(pg, ("public", "docs"), "embedding", "docs_embedding_ivf")
    pg.execute("SET bitpress.probes = 60")
    assert recall(pg, x, queries, ("public", "docs"), "embedding") >= 0.9

    # the migration: downgrade drops the index, upgrade makes it on the loaded rows
    ns = {}
    exec(migration, ns)
    for step in ("downgrade", "upgrade"):
        with pg_engine.begin() as c, Operations.context(MigrationContext.configure(c)):
            ns[step]()
        if step == "downgrade":
            assert index.status(pg) == []
    (st,) = index.status(pg)
    assert (st.index, st.lists, st.rows, st.valid) == ("public.docs_embedding_ivf", 224, N, True)
    assert recall(pg, x, queries, ("public", "docs"), "embedding") >= 0.9
    with pg_engine.begin() as c, Operations.context(MigrationContext.configure(c)):
        ns["downgrade"]()

    # the CLI lines
    outs = []
    for line in cli.strip().splitlines():
        args = shlex.split(line.replace('"$DSN"', shlex.quote(pg_test_dsn)))
        assert args[0] == "bitpress"
        outs.append(run_cli(*args[1:]))
        assert outs[-1].returncode == 0, (line, outs[-1].stderr)
    assert outs[0].stdout.startswith("index public.docs_embedding_idx on public.docs (embedding bitpress_cosine_ops): "
                                     "224 lists, 1 bit(s), 5000 rows")
    (row,) = json.loads(outs[1].stdout)
    assert (row["index"], row["lists"], row["rows"], row["valid"]) == ("public.docs_embedding_idx", 224, N, True)
    assert outs[2].stdout.strip() == "dropped public.docs_embedding_idx"

    # the API (its own asserts check the values)
    exec(api, {"conn": pg})
    assert index.status(pg) == []

"""Code stores in PostgreSQL follow their table by OID and serve exactly who may read it.

Two tenants' tables of the same name, a renamed table, a dropped one, missing triggers; then an
owner, a reader, a writer, a reader under a row-level security policy and a role with no
access, each asking bitpress_knn, the store itself, its parallel form and bitpress's tables,
with every answer compared with numpy.
"""
from contextlib import contextmanager

import numpy as np
import psycopg
import pytest

from bitpress import schema
from conftest import restored_copy

DIM = 16
K = 5


def vec(v):
    return "[" + ",".join(f"{x:.6f}" for x in v) + "]"


def make_docs(pg, table, rng, ids):
    """table (id, v vector, code bit = sign of v) with rows for ids; returns {id: v}."""
    pg.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, v vector({DIM}), code bit({DIM}))")
    rows = {int(i): rng.standard_normal(DIM).astype(np.float32) for i in ids}
    insert_docs(pg, table, rows)
    return rows


def insert_docs(pg, table, rows):
    with pg.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} (id, v, code) VALUES (%s, %s::vector, binarize(%s::vector))",
                        [(i, vec(v), vec(v)) for i, v in rows.items()])


def cosine_top(rows, q, k=K):
    ids = np.array(sorted(rows))
    x = np.stack([rows[i] for i in ids]).astype(np.float64)
    d = 1 - x @ q / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    return [int(ids[i]) for i in np.lexsort((ids, d))[:k]]


def sign_code(v):
    return "".join("1" if x > 0 else "0" for x in v)


def hamming_top(rows, q, k=K):
    qc = np.array([c == "1" for c in sign_code(q)])
    ids = np.array(sorted(rows))
    d = np.array([(np.array([c == "1" for c in sign_code(rows[i])]) != qc).sum() for i in ids])
    return [(int(ids[i]), int(d[i])) for i in np.lexsort((ids, d))[:k]]


def knn(pg, table, q):
    """bitpress_knn with a pool larger than the table: exact cosine top-K, store or not."""
    return [r[0] for r in pg.execute(
        f"SELECT id FROM bitpress_knn(NULL::{table}, 'code', 'v', %s::vector, {K}, 100)", (vec(q),)).fetchall()]


def store_knn(pg, store, q, parallel=False):
    fn = "bitpress_store_knn_parallel" if parallel else "bitpress_store_knn"
    return [tuple(r) for r in pg.execute(f"SELECT id, distance FROM {fn}(%s, %s::varbit, {K})",
                                         (store, sign_code(q))).fetchall()]


def sqlstate(pg, query, params=()):
    with pytest.raises(psycopg.Error) as ei:
        pg.execute(query, params).fetchall()
    return ei.value.sqlstate, str(ei.value)


def refusals(pg, store, q):
    """(SQLSTATE, message) of bitpress_store_knn and of its parallel form, both refusing."""
    return [sqlstate(pg, f"SELECT * FROM bitpress_store_knn{suffix}(%s, %s::varbit, 3)", (store, sign_code(q)))
            for suffix in ("", "_parallel")]


@contextmanager
def role(pg, name):
    pg.execute(f"SET ROLE {name}")
    try:
        yield pg
    finally:
        pg.execute("RESET ROLE")


@pytest.fixture
def books(pg):
    schema.upgrade(pg)
    return pg


def test_tenants_tables_of_one_name_are_never_mixed(books):
    pg, rng = books, np.random.default_rng(3)
    pg.execute("CREATE SCHEMA tenant_a; CREATE SCHEMA tenant_b")
    a = make_docs(pg, "tenant_a.docs", rng, range(0, 300))
    b = make_docs(pg, "tenant_b.docs", rng, range(1000, 1040))
    pg.execute("SET search_path = tenant_a, public")
    assert pg.execute("SELECT bitpress_store_create('s', 'docs', 'id', 'code')").fetchone()[0] == 300
    pg.execute("SET search_path = tenant_b, public")
    q = rng.standard_normal(DIM).astype(np.float32)
    # tenant b's docs have no store: answered from b's rows, not from a's store
    assert knn(pg, "docs", q) == cosine_top(b, q)
    assert knn(pg, "tenant_a.docs", q) == cosine_top(a, q)
    # a rebuild reads the store's own table whatever the search_path
    assert pg.execute("SELECT bitpress_store_rebuild('s')").fetchone()[0] == 300
    assert store_knn(pg, "s", q) == store_knn(pg, "s", q, parallel=True) == hamming_top(a, q)
    assert pg.execute("SELECT source::text FROM bitpress.code_stores").fetchone()[0] == "tenant_a.docs"


def test_a_renamed_table_is_followed_and_a_new_one_of_its_name_is_not(books):
    pg, rng = books, np.random.default_rng(4)
    old = make_docs(pg, "docs", rng, range(200))
    pg.execute("SELECT bitpress_store_create('s', 'docs', 'id', 'code')")
    pg.execute("ALTER TABLE docs RENAME TO docs_2025")
    new = make_docs(pg, "docs", rng, range(500, 520))
    more = {i: rng.standard_normal(DIM).astype(np.float32) for i in range(900, 905)}
    insert_docs(pg, "docs_2025", more)  # written after the rename: still tracked
    old.update(more)
    q = rng.standard_normal(DIM).astype(np.float32)
    assert store_knn(pg, "s", q) == store_knn(pg, "s", q, parallel=True) == hamming_top(old, q)
    assert knn(pg, "docs", q) == cosine_top(new, q)
    assert knn(pg, "docs_2025", q) == cosine_top(old, q)
    pg.execute("SELECT bitpress_store_drop('s')")
    assert pg.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'bitpress_store_%'").fetchone()[0] == 0


def test_a_store_whose_table_or_triggers_are_gone_serves_nobody(books):
    pg, rng = books, np.random.default_rng(5)
    rows = make_docs(pg, "docs", rng, range(100))
    pg.execute("SELECT bitpress_store_create('s', 'docs', 'id', 'code')")
    q = rng.standard_normal(DIM).astype(np.float32)
    trig = pg.execute("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'bitpress_store_%_i'").fetchone()[0]
    pg.execute(f"ALTER TABLE docs DISABLE TRIGGER {trig}")
    for state, msg in refusals(pg, "s", q):
        assert state == "55000" and f"its trigger {trig} is missing or disabled" in msg, msg
    assert sqlstate(pg, "SELECT bitpress_store_rebuild('s')")[0] == "55000"
    insert_docs(pg, "docs", {777: q})  # escapes the store: bitpress_knn scans the table instead
    rows[777] = q
    assert knn(pg, "docs", q) == cosine_top(rows, q)
    pg.execute(f"ALTER TABLE docs ENABLE TRIGGER {trig}")
    pg.execute("DROP TABLE docs")
    state, msg = sqlstate(pg, "SELECT * FROM bitpress_store_knn('s', %s::varbit, 3)", (sign_code(q),))
    assert state == "42P01" and "follows a table that no longer exists" in msg, msg
    pg.execute("SELECT bitpress_store_drop('s')")
    assert pg.execute("SELECT count(*) FROM bitpress.code_stores").fetchone()[0] == 0


def test_another_table_cannot_write_a_store_s_delta(books):
    pg, rng = books, np.random.default_rng(6)
    rows = make_docs(pg, "docs", rng, range(50))
    pg.execute("SELECT bitpress_store_create('s', 'docs', 'id', 'code')")
    make_docs(pg, "mine", rng, [])
    pg.execute("CREATE TRIGGER forged AFTER INSERT ON mine REFERENCING NEW TABLE AS new_rows "
               "FOR EACH STATEMENT EXECUTE FUNCTION bitpress_store_track('s')")
    state, msg = sqlstate(pg, "INSERT INTO mine VALUES (1, %s::vector, %s::bit(16))",
                          (vec(np.ones(DIM)), "1" * DIM))
    assert state == "42501" and 'code store "s" follows table public.docs, not public.mine' in msg, msg
    q = rng.standard_normal(DIM).astype(np.float32)
    assert store_knn(pg, "s", q) == hamming_top(rows, q)


@pytest.fixture
def roles(books):
    """docs (owned by bp_owner, no RLS) and private (RLS: bp_limited sees id <= 10), each with
    a store made by the superuser; bp_reader may read docs, bp_writer only insert into it,
    bp_columns read its id and code only, bp_nobody nothing."""
    pg, rng = books, np.random.default_rng(7)
    names = ("bp_owner", "bp_reader", "bp_writer", "bp_limited", "bp_nobody", "bp_columns")
    for r in names:
        pg.execute(f"DROP ROLE IF EXISTS {r}")
        pg.execute(f"CREATE ROLE {r}")
    pg.execute("GRANT CREATE ON SCHEMA public TO bp_owner")
    with role(pg, "bp_owner"):
        docs = make_docs(pg, "docs", rng, range(-20, 180))
        private = make_docs(pg, "private", rng, range(0, 60))
        pg.execute("GRANT SELECT ON docs TO bp_reader")
        pg.execute("GRANT INSERT ON docs TO bp_writer")
        pg.execute("GRANT SELECT (id, code) ON docs TO bp_columns")
        pg.execute("GRANT SELECT ON private TO bp_limited")
        pg.execute("ALTER TABLE private ENABLE ROW LEVEL SECURITY")
        pg.execute("CREATE POLICY few ON private FOR SELECT TO bp_limited USING (id <= 10)")
    pg.execute("SELECT bitpress_store_create('d', 'docs', 'id', 'code')")
    pg.execute("SELECT bitpress_store_create('p', 'private', 'id', 'code')")
    yield pg, rng, docs, private
    pg.execute("RESET ROLE")
    pg.execute("DROP TABLE docs, private")
    pg.execute("REVOKE ALL ON SCHEMA public FROM bp_owner")
    for r in names:
        pg.execute(f"DROP OWNED BY {r}")
        pg.execute(f"DROP ROLE {r}")


def test_the_owner_and_a_reader_are_served_by_the_store(roles):
    pg, rng, docs, private = roles
    q = rng.standard_normal(DIM).astype(np.float32)
    for name in ("bp_owner", "bp_reader"):
        with role(pg, name):
            assert knn(pg, "docs", q) == cosine_top(docs, q)
            assert store_knn(pg, "d", q) == store_knn(pg, "d", q, parallel=True) == hamming_top(docs, q)
            assert pg.execute("SELECT count(*) FROM bitpress.code_segments").fetchone()[0] >= 1
    with role(pg, "bp_owner"):  # the owner is not subject to its table's policy
        assert knn(pg, "private", q) == cosine_top(private, q)
        assert store_knn(pg, "p", q) == hamming_top(private, q)


def test_a_writer_without_rights_on_bitpress_writes_through_the_store(roles):
    pg, rng, docs, _ = roles
    new = {1000 + i: rng.standard_normal(DIM).astype(np.float32) for i in range(3)}
    with role(pg, "bp_writer"):
        insert_docs(pg, "docs", new)
        state, msg = sqlstate(pg, "SELECT * FROM bitpress_store_knn('d', %s::varbit, 3)", ("0" * DIM,))
        assert state == "42501" and "permission denied for table public.docs" in msg, msg
    docs.update(new)
    for v in new.values():
        assert store_knn(pg, "d", v) == hamming_top(docs, v)
    assert pg.execute("SELECT count(*) FROM bitpress.code_delta").fetchone()[0] == 3


def test_column_privileges_are_the_store_s(roles):
    pg, rng, docs, _ = roles
    q = rng.standard_normal(DIM).astype(np.float32)
    with role(pg, "bp_columns"):
        assert store_knn(pg, "d", q) == hamming_top(docs, q)


def test_a_policy_is_honoured_and_a_role_without_access_sees_nothing(roles):
    pg, rng, _, private = roles
    q = rng.standard_normal(DIM).astype(np.float32)
    visible = {i: v for i, v in private.items() if i <= 10}
    with role(pg, "bp_limited"):
        got = knn(pg, "private", q)  # the table scanned through its policy
        assert got == cosine_top(visible, q) and max(got) <= 10
        for state, msg in refusals(pg, "p", q):
            assert state == "42501" and "row-level security of table public.private applies to role bp_limited" in msg
        for t in ("code_stores", "code_segments", "code_delta"):
            assert pg.execute(f"SELECT count(*) FROM bitpress.{t}").fetchone()[0] == 0, t
    with role(pg, "bp_nobody"):
        assert sqlstate(pg, f"SELECT * FROM bitpress_knn(NULL::docs, 'code', 'v', %s::vector, {K})",
                        (vec(q),))[0] == "42501"
        for store in ("d", "p"):
            state, msg = sqlstate(pg, "SELECT * FROM bitpress_store_knn(%s, %s::varbit, 3)", (store, sign_code(q)))
            assert state == "42501" and "permission denied for table" in msg, msg
        for t in ("code_stores", "code_segments", "code_delta"):
            assert pg.execute(f"SELECT count(*) FROM bitpress.{t}").fetchone()[0] == 0, t


def test_the_guarantees_page_example_runs_as_written(books):
    """docs/GUARANTEES.md's two SQL blocks, run as written on a table with a store."""
    import re

    from conftest import ROOT

    grants, policy = re.findall(r"```sql\n(.*?)```", (ROOT / "docs" / "GUARANTEES.md").read_text(), re.S)
    pg, rng = books, np.random.default_rng(8)
    for r in ("reader", "writer", "limited"):
        pg.execute(f"DROP ROLE IF EXISTS {r}")
        pg.execute(f"CREATE ROLE {r}")
    rows = make_docs(pg, "docs", rng, range(1, 41))
    pg.execute("SELECT bitpress_store_create('s', 'docs', 'id', 'code')")
    pg.execute(grants)
    pg.execute("GRANT SELECT ON docs TO limited")
    q = rng.standard_normal(DIM).astype(np.float32)
    with role(pg, "reader"):
        assert store_knn(pg, "s", q) == hamming_top(rows, q)
    with role(pg, "writer"):
        insert_docs(pg, "docs", {99: q})
    rows[99] = q
    assert store_knn(pg, "s", q)[0] == (99, 0)
    pg.execute(policy)
    with role(pg, "limited"):
        assert knn(pg, "docs", q) == cosine_top({i: v for i, v in rows.items() if i <= 10}, q)
        assert sqlstate(pg, "SELECT * FROM bitpress_store_knn('s', %s::varbit, 3)", (sign_code(q),))[0] == "42501"
    with role(pg, "reader"):
        assert knn(pg, "docs", q) == []
        assert sqlstate(pg, "SELECT * FROM bitpress_store_knn('s', %s::varbit, 3)", (sign_code(q),))[0] == "42501"
    assert store_knn(pg, "s", q)[0] == (99, 0)  # the owner still is served
    pg.execute("DROP TABLE docs")
    for r in ("reader", "writer", "limited"):
        pg.execute(f"DROP OWNED BY {r}")
        pg.execute(f"DROP ROLE {r}")


def test_bitpress_knn_needs_no_bitpress_tables(pg):
    """Without `bitpress migrate` (no bitpress schema), bitpress_knn scans the table."""
    rng = np.random.default_rng(9)
    rows = make_docs(pg, "docs", rng, range(30))
    q = rng.standard_normal(DIM).astype(np.float32)
    assert knn(pg, "docs", q) == cosine_top(rows, q)


def test_a_database_with_stores_dumps_and_restores(roles, postgresql_proc, tmp_path):
    """pg_dump / pg_restore of a database with stores, a pending delta, row-level security and
    grants: the restored stores answer exactly, to the same roles, and the triggers still feed
    them (the regclass source, the policies and the triggers come back in a working order)."""
    pg, rng, docs, private = roles
    new = {5000: rng.standard_normal(DIM).astype(np.float32)}
    insert_docs(pg, "docs", new)  # a pending delta row
    docs.update(new)
    with restored_copy(pg, postgresql_proc, tmp_path, "restored") as r:
        check_restored(r, rng, docs, private)


def check_restored(r, rng, docs, private):
    with r:
        q = rng.standard_normal(DIM).astype(np.float32)
        assert store_knn(r, "d", q) == store_knn(r, "d", q, parallel=True) == hamming_top(docs, q)
        with role(r, "bp_reader"):
            assert store_knn(r, "d", q) == hamming_top(docs, q)
        with role(r, "bp_limited"):
            assert sqlstate(r, "SELECT * FROM bitpress_store_knn('p', %s::varbit, 3)", (sign_code(q),))[0] == "42501"
            assert knn(r, "private", q) == cosine_top({i: v for i, v in private.items() if i <= 10}, q)
        more = {6000: q}
        insert_docs(r, "docs", more)
        docs.update(more)
        assert store_knn(r, "d", q)[0] == (6000, 0)
        assert r.execute("SELECT bitpress_store_rebuild('d')").fetchone()[0] == len(docs)
        assert store_knn(r, "d", q) == hamming_top(docs, q)

"""docs/ADOPTING.md, run block by block against a real PostgreSQL with pgvector: every SQL
statement, every shell command (bitpress and alembic) and the Alembic migration shown there.

Only blocks marked ``<!-- as: superuser -->`` run as a superuser; the rest run as
``bitpress_app``, an ordinary role that owns the table, so the guide also proves that nothing
but CREATE EXTENSION needs a superuser. The application's writes run as ``bitpress_writer``,
which owns nothing and is granted only what the guide says.
"""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg
import pytest

from bitpress import codebooks
from conftest import ROOT, create_docs, run_cli

GUIDE = ROOT / "docs" / "ADOPTING.md"
BLOCK = re.compile(r"(?:<!-- as: (?P<role>\w+) -->\n)?```(?P<lang>\w+)\n(?P<body>.*?)```", re.S)

ENV_PY = '''
import os
from alembic import context
from sqlalchemy import create_engine

engine = create_engine(os.environ["DATABASE_URL"])
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
'''


def blocks():
    return [(m["role"] or "bitpress_app", m["lang"], m["body"]) for m in BLOCK.finditer(GUIDE.read_text())]


def test_the_guide_has_the_blocks_this_test_checks():
    langs = [lang for _, lang, _ in blocks()]
    assert langs.count("sql") == 7 and langs.count("sh") == 5 and langs.count("python") == 1
    assert [role for role, lang, _ in blocks() if lang == "sql"].count("superuser") == 1


@pytest.fixture
def roles(pg, postgresql_proc):
    p = postgresql_proc
    db = pg.info.dbname
    for role in ("bitpress_app", "bitpress_writer"):
        pg.execute(f"DROP ROLE IF EXISTS {role}")  # roles are per cluster, databases per test
        pg.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
    pg.execute(f'GRANT CREATE ON DATABASE "{db}" TO bitpress_app')
    pg.execute("GRANT CREATE ON SCHEMA public TO bitpress_app")
    yield {r: f"host={p.host} port={p.port} user={r} dbname={db}" for r in ("bitpress_app", "bitpress_writer")}
    pg.execute("DROP OWNED BY bitpress_app, bitpress_writer CASCADE")
    pg.execute("DROP ROLE bitpress_app")
    pg.execute("DROP ROLE bitpress_writer")


def test_adopting_guide_runs_as_written(pg, roles, tmp_path):
    from pgvector.psycopg import register_vector

    pg.execute("DROP EXTENSION bitpress")  # step 1 creates it
    texts, x = create_docs(pg, 3000)
    pg.execute("ALTER TABLE documents OWNER TO bitpress_app")
    pg.execute("GRANT SELECT, INSERT, UPDATE ON documents TO bitpress_writer")
    dsn = roles["bitpress_app"]
    info = pg.info
    url = f"postgresql+psycopg://bitpress_app@{info.host}:{info.port}/{info.dbname}"
    project = tmp_path / "app_migrations"
    (project / "versions").mkdir(parents=True)
    (project / "env.py").write_text(ENV_PY)
    (tmp_path / "alembic.ini").write_text(f"[alembic]\nscript_location = {project}\n")

    app = psycopg.connect(dsn, autocommit=True)
    register_vector(app)
    results = []  # the last result of each SQL block
    for role, lang, body in blocks():
        if lang == "sql":
            conn = pg if role == "superuser" else app
            cur = conn.execute(body)
            while cur.nextset():  # several statements: keep the last one's result
                pass
            results.append(cur.fetchall() if cur.description else None)
        elif lang == "python":
            (project / "versions" / "a1_documents_code.py").write_text(body)
        else:
            for line in body.strip().splitlines():
                argv = shlex.split(line.replace('"$DSN"', shlex.quote(dsn)))
                if argv[0] == "bitpress":
                    proc = run_cli(*argv[1:])
                else:
                    assert argv[0] == "alembic"
                    proc = subprocess.run([sys.executable, "-m", "alembic", *argv[1:]], cwd=tmp_path,
                                          capture_output=True, text=True,
                                          env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
                assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
        if lang == "sh" and "alembic upgrade" in body:
            # right after the migration, the application's own role writes: the trigger codes its
            # rows with what the grants of step 4 let it read
            with psycopg.connect(roles["bitpress_writer"], autocommit=True) as w:
                register_vector(w)
                w.execute("INSERT INTO documents (id, body, embedding) VALUES (2000000, 'from the app', %s)", (x[7],))
                w.execute("UPDATE documents SET embedding = %s WHERE id = 8", (x[9],))
            book = codebooks.load(app, "docs_v1", 1)
            got = [bytes(r[0]) for r in app.execute(
                "SELECT code_bytes(code) FROM documents WHERE id IN (8, 2000000) ORDER BY id").fetchall()]
            assert got == [book.encode_reference(x[[9]])[0].tobytes(), book.encode_reference(x[[7]])[0].tobytes()]

    coded, counts, knn, hnsw, sizes = [r for r in results if r is not None]
    assert coded == [(42, False), (1000000, True)]
    assert counts == [(3002, 3002)]  # 3000 + the example row + the application's row
    assert len(knn) == 10 and knn[0][0] in (42, 1000000) and {42, 1000000} <= {r[0] for r in knn[:2]}
    assert hnsw[0][0] in (42, 1000000) and len(hnsw) == 10
    assert sizes[0][0].endswith(("MB", "kB")) and sizes[0][1].endswith("kB")

    # alembic downgrade base: trigger, function, column and registry row are gone; rows are not
    cols = [r[0] for r in app.execute("SELECT column_name FROM information_schema.columns "
                                      "WHERE table_name = 'documents' ORDER BY ordinal_position").fetchall()]
    assert cols == ["id", "body", "embedding"]
    assert app.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'documents'::regclass "
                       "AND NOT tgisinternal").fetchone()[0] == 0
    assert app.execute("SELECT count(*) FROM bitpress.code_columns").fetchone()[0] == 0
    assert app.execute("SELECT count(*) FROM documents").fetchone()[0] == 3002
    # everything the guide made belongs to the ordinary role, not to a superuser
    assert app.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0] is False
    assert app.execute("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'bitpress'"
                       ).fetchone()[0] == "bitpress_app"
    app.close()

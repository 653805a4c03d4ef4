"""docs/INDEX.md's SQL blocks, run as written on the shared MiniLM rows."""
from __future__ import annotations

import re

import numpy as np

from conftest import ROOT, load_shared


def blocks():
    return re.findall(r"```sql\n(.*?)```", (ROOT / "docs" / "INDEX.md").read_text(), re.S)


def test_index_md_runs_as_written(pg):
    create, settings = blocks()
    before, after = create.split("-- ... load the rows, then:\n")
    pg.execute(before)
    x = load_shared("pypi-minilm", "corpus.npy")[:5000]
    with pg.cursor().copy("COPY docs (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "vector"])
        for i, v in enumerate(x):
            copy.write_row([i, v])
    *ddl, query = [s.strip() for s in after.split(";") if s.strip()]
    for s in ddl:
        pg.execute(s)
    ids = [r[0] for r in pg.execute(query)]
    exact = np.argsort(-(x @ x[1]), kind="stable")[:10]
    assert ids[0] == 1 and len(set(ids) & set(exact.tolist())) >= 9
    plan = "\n".join(r[0] for r in pg.execute("EXPLAIN " + query))
    assert "Index Scan using docs_embedding_ivf" in plan
    with pg.transaction():
        pg.execute(settings)
        assert pg.execute("SHOW bitpress.probes").fetchone()[0] == "100"
        assert pg.execute("SHOW bitpress.epsilon").fetchone()[0] == "3"
    assert pg.execute("SHOW bitpress.epsilon").fetchone()[0] == "1.9"

"""Progress bars for long work (sampling, fitting, backfills): tqdm on stderr.

``progress=None`` shows a bar only when stderr is a terminal; True or False force it.
"""
from __future__ import annotations

import sys


def enabled(progress=None) -> bool:
    return sys.stderr.isatty() if progress is None else bool(progress)


def bar(total=None, desc="", progress=None, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled(progress), leave=False, **kwargs)

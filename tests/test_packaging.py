"""One version everywhere, and no -march=native anywhere in what ships."""
import re

from conftest import ROOT

import bitpress


def test_single_version():
    core = re.search(r'#define BP_VERSION "([^"]+)"', (ROOT / "pyext/bp_core.h").read_text()).group(1)
    control = re.search(r"default_version = '([^']+)'", (ROOT / "sql/bitpress.control").read_text()).group(1)
    assert bitpress.__version__ == core == control


def test_no_march_native_in_builds():
    for path in ("setup.py", "sql/Makefile", "pyproject.toml"):
        text = (ROOT / path).read_text()
        assert not re.search(r"^[^#]*-march=native", text, re.M), path

"""The C core compiled on its own with AddressSanitizer and UBSan (pyext/tests/test_core.c):
every kernel path this CPU has, every length up to 300 bytes, buffers ending exactly at their
allocation so an out-of-bounds SIMD read fails the test."""
import shutil
import subprocess

import pytest
from conftest import ROOT

CORE = ["bp_binarize.c", "bp_hamming.c", "bp_error.c", "bp_codebook.c", "bp_topk.c", "bp_tt.c", "bp_ffn.c", "bp_ivf.c"]


@pytest.mark.parametrize("flags", [["-O2"], ["-O0"]], ids=["O2", "O0"])
def test_core_under_asan_and_ubsan(tmp_path, flags):
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is required"
    exe = tmp_path / "test_core"
    pyext = ROOT / "pyext"
    build = subprocess.run(
        [cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-g", *flags,
         "-fsanitize=address,undefined", "-fno-sanitize-recover=all", f"-I{pyext}",
         str(pyext / "tests" / "test_core.c"), *[str(pyext / f) for f in CORE], "-lm", "-o", str(exe)],
        capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True,
                         env={"ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 failed" in run.stdout
    passed = int(run.stdout.strip().splitlines()[-1].split()[0])
    assert passed > 1000

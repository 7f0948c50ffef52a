"""The unit tests of the module's pure parts (t/unit/, scripts/unit.sh):
built and run without nginx, so that the suite fails when one of them
does.  The first run builds nginx's objects into build/unit/ (about a
minute); after that it takes seconds."""
import re
import subprocess

from conftest import ROOT


def test_unit_tests_pass():
    r = subprocess.run(["bash", "scripts/unit.sh"], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=900)
    out = r.stdout.rstrip("\n")
    last = out.rsplit("\n", 1)[-1]
    assert r.returncode == 0 and re.fullmatch(r"\d+ passed, 0 failed", last), \
        "scripts/unit.sh exited with %d:\n%s" % (r.returncode, out)

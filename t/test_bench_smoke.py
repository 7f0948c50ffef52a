"""Seconds-long smoke of the benchmark harness (bench/).

Builds the bench tools, runs `bench/run.sh --quick` into a temporary
results directory and checks that it writes a results JSON with the
expected keys.  It asserts nothing about performance: the benchmark is
not part of the suite's pass/fail.
"""
import glob
import json
import os
import subprocess

import pytest

T_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(T_DIR)
BENCH = os.path.join(ROOT, "bench")


def test_bench_tools_build():
    p = subprocess.run(["make", "-s", "-C", BENCH], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=120)
    assert p.returncode == 0, p.stdout.decode()
    for tool in ("loadgen", "fakeof", "fakexmpp"):
        assert os.access(os.path.join(BENCH, tool), os.X_OK), tool


def test_bench_quick_writes_results(module_path, tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, BENCH_SKIP_BUILD="1")
    p = subprocess.run(["bash", os.path.join(BENCH, "run.sh"), "--quick",
                        "--outdir", str(out)], cwd=ROOT, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=180)
    text = p.stdout.decode("utf-8", "replace")
    files = glob.glob(str(out / "*.json"))
    assert files, "no results JSON; rc=%d\n%s" % (p.returncode, text[-3000:])
    with open(files[0]) as f:
        res = json.load(f)
    for key in ("timestamp", "machine", "params", "scale", "ramp", "latency",
                "summary", "errors", "skipped"):
        assert key in res, key
    assert res["quick"] is True
    assert not res["errors"], res["errors"]
    targets = {r["target"] for r in res["scale"]}
    assert {"cm", "relay"} <= targets, targets
    for r in res["scale"]:
        for key in ("sessions", "logins_ok", "login_rate", "cpu_per_msg_us",
                    "mem_per_session_b", "msg_sent", "msg_received",
                    "loadgen_cpu_per_msg_us", "lat_p99_us", "rss_kb_before",
                    "rss_kb_after_login"):
            assert key in r, (r["target"], key)
        # every client logged in for real and messages went through
        assert r["logins_ok"] == r["sessions"], r
        assert r["msg_received"] > 0, r
    assert "cm" in res["ramp"] and "peak_rate" in res["ramp"]["cm"]
    assert "cpu_ratio_cm_relay" in res["summary"]
    # the Nagle rows: direct, the CM before a Nagle-on far end, and with
    # TCP_NODELAY, all in this run, every message delivered
    row = res["nagle"]["1000"]
    assert set(row) == {"direct", "cm-nagle", "cm"}, row.keys()
    for tn, r in row.items():
        assert r["sent"] > 0 and r["received"] == r["sent"], (tn, r)
        assert r["lat_p50_us"] and r["lat_p99_us"], (tn, r)
    assert "1000" in res["summary"]["nagle_ratio_cm_direct"]
    assert p.returncode == 0, text[-3000:]
    assert "login/s" in text and "us/msg" in text

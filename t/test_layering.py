"""The engine's files call each other in one direction only
(docs/architecture.md, "Streams and connections"): client -> stream ->
route -> upstream -> output, and everything may use the leaves below
them.  Read from the objects of the build: every symbol an object needs
that another object of the module defines is an edge, and an edge that
goes up the order is a call cycle waiting to happen."""
import os
import subprocess

import pytest

from conftest import ROOT

# higher calls lower; equal ranks may not call each other
RANK = {
    "ngx_http_xmpp_cm_metrics_module": 9,
    "ngx_http_xmpp_cm_websocket_module": 9,
    "ngx_http_xmpp_cm_bosh_module": 9,
    "ngx_stream_xmpp_cm_client": 8,
    "ngx_stream_xmpp_cm_stream": 7,
    "ngx_stream_xmpp_cm_handoff": 7,
    "ngx_stream_xmpp_cm_sm": 6.5,
    "ngx_stream_xmpp_cm_route": 6,
    "ngx_stream_xmpp_cm_upstream": 5,
    "ngx_stream_xmpp_cm_output": 4,
    "ngx_stream_xmpp_cm_tls": 3,
    "ngx_stream_xmpp_cm_zlib": 3,
    "ngx_stream_xmpp_cm_metrics": 2,
    "ngx_stream_xmpp_cm_jid": 2,
    "ngx_stream_xmpp_cm_xml": 1,
}


def symbols(obj, defined):
    args = ["nm", "-g", "--defined-only", obj] if defined else \
        ["nm", "-u", obj]
    out = subprocess.run(args, stdout=subprocess.PIPE, check=True,
                         universal_newlines=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_no_file_calls_up_the_order(module_path):
    # module_path: the module is built unless given prebuilt
    objs = os.path.join(ROOT, "build", "nginx", "objs", "addon", "src")
    if not os.path.isdir(objs):
        pytest.skip("no object files in %s (module given prebuilt)" % objs)

    names = sorted(f[:-2] for f in os.listdir(objs) if f.endswith(".o"))
    assert set(names) == set(RANK), \
        "engine files changed: give each a rank here and in the doc: %s" \
        % sorted(set(names) ^ set(RANK))

    need = {n: symbols(os.path.join(objs, n + ".o"), False) for n in names}
    have = {n: symbols(os.path.join(objs, n + ".o"), True) for n in names}

    edges, wrong = [], []
    for a in names:
        for b in names:
            if a == b:
                continue
            used = sorted(need[a] & have[b])
            if not used:
                continue
            edges.append((a, b))
            if RANK[a] <= RANK[b]:
                wrong.append("%s -> %s: %s" % (a, b, " ".join(used)))

    # the check sees the real graph: the main chain is there
    for a, b in [("ngx_stream_xmpp_cm_client", "ngx_stream_xmpp_cm_stream"),
                 ("ngx_stream_xmpp_cm_stream", "ngx_stream_xmpp_cm_route"),
                 ("ngx_stream_xmpp_cm_route", "ngx_stream_xmpp_cm_upstream"),
                 ("ngx_stream_xmpp_cm_upstream",
                  "ngx_stream_xmpp_cm_output")]:
        assert (a, b) in edges, "expected edge %s -> %s missing" % (a, b)

    assert not wrong, "calls up the order:\n" + "\n".join(wrong)

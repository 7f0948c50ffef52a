"""A real web client in a real browser through the CM (issue 13 item 4):
Converse.js from npm, served by the same nginx, in Debian's headless
Chromium (t/web/drive.js, playwright-core), logs in as alice over
WebSocket or BOSH; bob is a slixmpp client on the CM's TCP port. They
exchange messages both ways, the browser's side read from its DOM, and a
screenshot of the chat goes to t/out/ (XMPP_CM_TEST_OUT overrides).

test_harness_prosody_* run the same page and the same driver against
Debian's Prosody 0.12 (mod_websocket, mod_bosh) behind the same nginx as a
proxy: they are not tests of the CM but of the harness, so that a failure
of the CM tests is known to be the CM's."""
import asyncio
import json
import os
import time

import pytest

from conftest import T_DIR, server_block
from lib import nginx as nginx_lib
from lib import web
from lib.util import free_port
from lib.xmpp import Client, run

OUT_DIR = os.environ.get("XMPP_CM_TEST_OUT") or os.path.join(T_DIR, "out")

LOCATION = {
    "websocket": ("xmpp_cm_websocket",
                  "location = /xmpp-websocket { xmpp_cm_websocket %s; }"),
    "bosh": ("xmpp_cm_bosh", "location = /http-bind { xmpp_cm_bosh %s; }"),
}


@pytest.fixture(scope="module")
def web_ready():
    """The browser, node and the npm packages (scripts/deps.sh installs
    them): a skip where they are missing, a failure in CI."""
    gone = web.missing()
    if gone:
        msg = "not installed: %s; scripts/deps.sh installs them" % \
            ", ".join(gone)
        if os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    os.makedirs(OUT_DIR, exist_ok=True)
    return True


def _timed(steps, name, t0):
    steps.append("%s %.2fs" % (name, time.monotonic() - t0))


def chat(port, tcp_port, transport, shot, tmp_path, peer_pw="bobpw",
         while_on=None):
    """alice in the browser (page on 127.0.0.1:port, the given transport),
    bob over TCP on tcp_port: browser -> bob, bob -> browser, screenshot;
    then while_on(alice's full JID), while both are still logged in.
    Returns (alice's full JID, the per-step times)."""
    steps = []
    to_bob = "hello bob <&> \u00e9 %s" % transport
    to_alice = "hi alice \u2018quoted\u2019 & <b>not bold</b> %s" % transport
    browser = web.Browser(tmp_path)
    t_all = time.monotonic()

    async def scenario():
        loop = asyncio.get_running_loop()

        def call(cmd, **kw):
            return loop.run_in_executor(None,
                                        lambda: browser.call(cmd, **kw))

        bob = Client("bob@localhost/phone", peer_pw, tcp_port)
        t0 = time.monotonic()
        await bob.login()
        _timed(steps, "bob TCP login", t0)
        try:
            t0 = time.monotonic()
            r = await call("open", url=web.page_url(
                port, transport, "alice@localhost", "alicepw"),
                peer="bob@localhost")
            _timed(steps, "browser load+login+roster", t0)
            assert r["transport"] == transport, r
            alice = r["jid"]
            assert alice.startswith("alice@localhost/"), r

            t0 = time.monotonic()
            await call("send", to="bob@localhost", body=to_bob)
            # Converse may send chat states (body-less) before the text
            while True:
                f, body, _ = await bob.recv(timeout=20)
                if body:
                    break
            _timed(steps, "browser -> bob", t0)
            assert (f, body) == (alice, to_bob)

            t0 = time.monotonic()
            bob.send_message("alice@localhost", to_alice)
            r = await call("expect", **{"from": "bob@localhost",
                                        "body": to_alice})
            _timed(steps, "bob -> browser", t0)
            assert r["text"] == to_alice, r
            assert r["from"] == "bob@localhost/phone", r

            await call("screenshot", path=shot)
            rep = await call("report")
            # the page loaded everything from the nginx under test; the
            # one exception is Converse's own fullscreen login footer, whose
            # sponsor logos are images on its web site (blocked here)
            offsite = [o for o in rep["offsite"]
                       if not (o["type"] == "image" and o["url"].startswith(
                           "https://conversejs.org/media/logos/"))]
            why = json.dumps(rep, indent=1)
            assert offsite == [], why
            assert rep["http_errors"] == [], why
            assert rep["page_errors"] == [], why
            if while_on is not None:
                while_on(alice)
            return alice
        finally:
            await bob.close()

    try:
        alice = run(scenario(), 120)
    finally:
        browser.close()
    _timed(steps, "total", t_all)
    w, h = web.check_png(shot)
    print("\nscreenshot: %s (%dx%d)\n%s: %s" % (shot, w, h, transport,
                                                 ", ".join(steps)))
    return alice, steps


def cm_config_or_skip(tmp_path, module_path, transport, body, http):
    """nginx -t on the whole configuration: a skip naming the directive
    when this build does not have it (the parser's own 'unknown
    directive'), a failure for any other error."""
    directive = LOCATION[transport][0]
    conf = nginx_lib.make_conf(str(tmp_path / "t"), module_path, body,
                               log_level="info", main_extra=http)
    rc, out = nginx_lib.nginx_t(str(tmp_path / "t"), conf)
    if rc != 0 and 'unknown directive "%s"' % directive in out:
        pytest.skip("%s not built yet (nginx -t: unknown directive)"
                    % directive)
    assert rc == 0, out


@pytest.mark.parametrize("transport", ["websocket", "bosh"])
def test_converse_through_cm(web_ready, standin, nginx, module_path,
                             tmp_path, transport):
    """Converse.js logs in through the CM's http location over the given
    transport, bob through the CM's TCP port; the stand-in (Openfire) sees
    both sessions from the CM and routes the messages."""
    sb = standin()
    http_port = free_port()
    stream_port = free_port()
    body = server_block(stream_port, "127.0.0.1:%d" % sb.port)
    http = web.web_block(http_port, LOCATION[transport][1] % "cm1")
    cm_config_or_skip(tmp_path, module_path, transport, body, http)
    ngx = nginx(standin=sb, port=stream_port, main_extra=http)
    ngx.wait_port(http_port)
    shot = os.path.join(OUT_DIR, "converse-%s-cm.png" % transport)

    def both_at_openfire(alice):
        # Openfire has both sessions, bound, from this CM's sockets
        got = {s["jid"]: s for s in sb.sessions(bound=True)}
        for jid in (alice, "bob@localhost/phone"):
            assert jid in got, (jid, got)
            assert str(got[jid]["cm"]).startswith("cm1-"), got[jid]

    chat(http_port, stream_port, transport, shot, tmp_path,
         while_on=both_at_openfire)
    # and the CM routed the messages both ways
    evs = [e["xml"] for e in sb.events() if e["dir"] == "in"]
    assert any("<route" in x and "hello bob &lt;&amp;&gt;" in x
               for x in evs), "browser's message not routed by the CM"
    assert any("<route" in x and "hi alice" in x for x in evs)


@pytest.mark.parametrize("transport", ["websocket", "bosh"])
def test_harness_prosody(web_ready, nginx, tmp_path, transport):
    """Harness self-check, not a CM test: the same page and driver against
    Debian's Prosody (mod_websocket / mod_bosh) behind this nginx as a
    proxy, bob on Prosody's own c2s port."""
    gone = web.missing(prosody=True)
    if gone:
        pytest.skip("not installed: %s" % ", ".join(gone))
    p = web.Prosody(tmp_path, {"alice": "alicepw", "bob": "bobpw"})
    try:
        http_port = free_port()
        nginx("# no stream server: only the http block", port=http_port,
              main_extra=web.web_block(http_port, p.proxy_locations()))
        shot = os.path.join(OUT_DIR, "converse-%s-prosody.png" % transport)
        try:
            chat(http_port, p.c2s_port, transport, shot, tmp_path)
        except BaseException:
            print(p.log())
            raise
    finally:
        p.stop()

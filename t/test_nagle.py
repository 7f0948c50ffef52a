"""Openfire leaves Nagle on for its CM sockets (xmpp.socket.tcp-nodelay
defaults to false), so each of its writes waits for the ACK of the one
before; the CM acknowledges promptly by re-arming TCP_QUICKACK after every
read on an Openfire socket (Linux clears it again).

No timing is asserted here: bench/ measures the latency (the Nagle rows,
CM against clients straight to the far end, in the same run).  These
tests check the mechanism: the stand-in keeps Nagle on unless --nodelay,
and the CM's worker sets TCP_QUICKACK on its Openfire sockets, and only
there, while stanzas flow."""
import os
import re
import shutil
import subprocess

import pytest

from lib.util import wait_until
from lib.xmpp import Client, run


def test_standin_keeps_nagle_on_as_openfire(standin, nginx):
    sb = standin()
    nginx(standin=sb)
    socks = sb.cm_sockets("cm1-")
    assert socks and all(s["nodelay"] is False for s in socks), socks
    sb2 = standin(extra_args=["--nodelay"])
    nginx(standin=sb2, name="cm2")
    socks = sb2.cm_sockets("cm2-")
    assert socks and all(s["nodelay"] is True for s in socks), socks


def tcp_fds_to_port(pid, port):
    """fds of process pid that are TCP connections to 127.0.0.1:port."""
    inodes = set()
    with open("/proc/%d/net/tcp" % pid) as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            rport = int(cols[2].split(":")[1], 16)
            if rport == port:
                inodes.add(cols[9])
    fds = set()
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        try:
            link = os.readlink(os.path.join(d, fd))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", link)
        if m and m.group(1) in inodes:
            fds.add(int(fd))
    return fds


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_quickack_rearmed_after_reads_on_openfire_sockets(standin, nginx,
                                                          tmp_path):
    sb = standin()
    ngx = nginx(standin=sb, log_level="info")
    worker = ngx.worker_pids()[0]
    upstream = tcp_fds_to_port(worker, sb.port)
    assert len(upstream) == 2, upstream
    out = tmp_path / "strace.txt"
    st = subprocess.Popen(["strace", "-qq", "-e", "trace=setsockopt",
                           "-o", str(out), "-p", str(worker)],
                          stderr=subprocess.PIPE)
    try:
        # strace is attached once a traced call shows up: a keepalive
        # read would do, a login certainly does
        async def chat(n):
            alice = Client("alice@localhost/pc", "alicepw", ngx.port)
            bob = Client("bob@localhost/phone", "bobpw", ngx.port)
            await alice.login()
            await bob.login()
            try:
                for i in range(n):
                    alice.send_message("bob@localhost/phone", "m%d" % i)
                    f, body, _ = await bob.recv()
                    assert body == "m%d" % i
            finally:
                await alice.close()
                await bob.close()

        wait_until(lambda: out.exists(), 10, what="strace attached")
        run(chat(20), 60)
        wait_until(lambda: len(re.findall(r"TCP_QUICKACK", out.read_text()))
                   >= 20, 10, what="TCP_QUICKACK after the reads")
    finally:
        st.terminate()
        st.wait(10)
    calls = re.findall(r"setsockopt\((\d+), SOL_TCP, TCP_QUICKACK, \[1\]",
                       out.read_text())
    assert calls
    # only on Openfire sockets, never on client connections
    assert set(int(fd) for fd in calls) <= upstream, (calls, upstream)

"""A second host on this machine, for what only a real network shows.

``RemoteRedis`` runs ``redis-server`` in a network namespace of its own,
reached over a veth pair, so that a test can make its host vanish: packets
of the connections open at that moment are dropped (``iptables``), as when a
Redis host dies or a failover moves its address, while new connections reach
the server again. Nothing answers the dropped packets, not even with a reset:
only the sender's own TCP timers can tell.

It needs root, ``ip`` (iproute2) and ``iptables``, which CI has (``.ci/run``).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
import uuid

from .redis_server import RedisServer

__all__ = ["RemoteRedis"]

REDIS_PORT = 6379


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


class RemoteRedis:
    """``redis-server`` on another host (a network namespace); a context manager."""

    def __init__(self) -> None:
        for tool in ("ip", "iptables"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not on PATH")
        tag = uuid.uuid4().hex[:8]
        self.namespace = f"cpt-{tag}"
        self._host_link, self._ns_link = f"cph{tag}", f"cpn{tag}"
        # A /30 of its own in 10.200.0.0/16, so that tests running at once never share one.
        third, fourth = divmod(random.randrange(1, 1 << 14) * 4, 256)
        self._host_address = f"10.200.{third}.{fourth + 1}"
        self.address = f"10.200.{third}.{fourth + 2}"
        self._server = RedisServer(REDIS_PORT, host=self.address, launcher=["ip", "netns", "exec", self.namespace])

    @property
    def url(self) -> str:
        return self._server.url

    def _in_namespace(self, *args: str) -> str:
        return _run("ip", "netns", "exec", self.namespace, *args)

    def __enter__(self) -> RemoteRedis:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        _run("ip", "netns", "add", self.namespace)
        _run("ip", "link", "add", self._host_link, "type", "veth", "peer", "name", self._ns_link)
        _run("ip", "link", "set", self._ns_link, "netns", self.namespace)
        _run("ip", "addr", "add", f"{self._host_address}/30", "dev", self._host_link)
        _run("ip", "link", "set", self._host_link, "up")
        self._in_namespace("ip", "addr", "add", f"{self.address}/30", "dev", self._ns_link)
        self._in_namespace("ip", "link", "set", self._ns_link, "up")
        self._in_namespace("ip", "link", "set", "lo", "up")
        self._server.start()

    def vanish_for_open_connections(self, blackout_s: float = 0.0) -> int:
        """Drop, from now on, every packet of the connections open now, both
        ways; new connections reach the server again after ``blackout_s``
        (a failover's length). Returns how many connections vanished."""
        # Everything is dropped while the open connections are listed, so
        # that none opens unlisted meanwhile (a SYN dropped now is sent again
        # a second later, and gets through as a new connection).
        everything = [("INPUT", "--dport"), ("OUTPUT", "--sport")]
        for chain, server_side in everything:
            self._in_namespace("iptables", "-I", chain, "-p", "tcp", server_side, str(REDIS_PORT), "-j", "DROP")
        listing = self._in_namespace("ss", "-tnH", "state", "established", f"( sport = :{REDIS_PORT} )")
        ports = sorted({line.split()[-1].rsplit(":", 1)[1] for line in listing.splitlines() if line.strip()})
        for port in ports:
            self._in_namespace("iptables", "-I", "INPUT", "-p", "tcp", "--sport", port, "-j", "DROP")
            self._in_namespace("iptables", "-I", "OUTPUT", "-p", "tcp", "--dport", port, "-j", "DROP")
        time.sleep(blackout_s)
        for chain, server_side in everything:
            self._in_namespace("iptables", "-D", chain, "-p", "tcp", server_side, str(REDIS_PORT), "-j", "DROP")
        return len(ports)

    def __exit__(self, *_: object) -> None:
        self._server.stop()
        # Deleting the namespace deletes its end of the pair, and with it ours.
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self._host_link], capture_output=True, timeout=30)

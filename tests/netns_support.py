"""Network namespaces that play separate hosts in the multi-host tests.

Each namespace gets ``lo`` up and a veth pair to the root namespace on its own /30 subnet
of ``10.X.Y.0/29`` (a random ``X.Y`` not already used on this machine), and a default
route to its root-side address. Servers in the root namespace that listen on the first
namespace's root-side address (``server_ip``) are reachable from every namespace at that
one address, as a database host is from every machine of a cluster. Needs root and the
``ip`` tool (iproute2); :func:`create_hosts` raises ``RuntimeError`` otherwise.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")


@dataclass
class Hosts:
    namespaces: list[str]
    root_ips: list[str]  # the root side of each namespace's veth pair
    host_ips: list[str]  # each namespace's own address
    network: str  # the CIDR range holding all of them (for pg_hba.conf)
    _veths: list[str] = field(default_factory=list)

    @property
    def server_ip(self) -> str:
        """The address servers in the root namespace listen on, reachable from every namespace."""
        return self.root_ips[0]

    def prefix(self, index: int) -> list[str]:
        """The command prefix that runs a program in namespace ``index``."""
        return ["ip", "netns", "exec", self.namespaces[index]]

    def remove(self) -> None:
        """Delete the namespaces (their veth ends and so the pairs go with them) and any
        root-side veth end left by a half-made setup."""
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
        for veth in self._veths:
            subprocess.run(["ip", "link", "delete", veth], capture_output=True, timeout=30)


def _unused_network() -> tuple[int, int]:
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=30).stdout
    for _ in range(100):
        x, y = random.randint(200, 250), random.randint(0, 255)
        if f" 10.{x}.{y}." not in used:
            return x, y
    raise RuntimeError("no unused 10.X.Y.0/29 range found for the test namespaces")


def create_hosts(count: int = 2) -> Hosts:
    """``count`` (at most 2) namespaces named ``automl-<random>-<i>``; see the module docstring."""
    if count > 2:
        raise ValueError("one /29 holds two /30 subnets")
    if os.geteuid() != 0:
        raise RuntimeError("not root (network namespaces need CAP_SYS_ADMIN)")
    if shutil.which("ip") is None:
        raise RuntimeError("no `ip` tool (apt-get install -y iproute2)")
    tag = uuid.uuid4().hex[:6]
    x, y = _unused_network()
    hosts = Hosts([], [], [], f"10.{x}.{y}.0/29")
    try:
        for i in range(count):
            ns, root_end, ns_end = f"automl-{tag}-{i}", f"vr{tag}{i}", f"vn{tag}{i}"
            root_ip, host_ip = f"10.{x}.{y}.{4 * i + 1}", f"10.{x}.{y}.{4 * i + 2}"
            _ip("netns", "add", ns)
            hosts.namespaces.append(ns)
            _ip("link", "add", root_end, "type", "veth", "peer", "name", ns_end)
            hosts._veths.append(root_end)
            _ip("link", "set", ns_end, "netns", ns)
            _ip("addr", "add", f"{root_ip}/30", "dev", root_end)
            _ip("link", "set", root_end, "up")
            _ip("-n", ns, "addr", "add", f"{host_ip}/30", "dev", ns_end)
            _ip("-n", ns, "link", "set", ns_end, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "default", "via", root_ip)
            hosts.root_ips.append(root_ip)
            hosts.host_ips.append(host_ip)
    except Exception:
        hosts.remove()
        raise
    return hosts

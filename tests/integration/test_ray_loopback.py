"""The listening sockets of a run's local Ray (GCS, raylet, agents, workers, the driver): all on
loopback, read from /proc/net/tcp and /proc/net/tcp6 for the driver's process tree."""

import ipaddress
import os
from pathlib import Path

import pytest

from stream_monitor.config import load_config
from stream_monitor.runtime.start import start_workers
from tests.conftest import RAY_START_TIMEOUT_S, RAY_TEST_TIMEOUT_S

pytestmark = [pytest.mark.timeout(RAY_TEST_TIMEOUT_S),
              pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="no /proc/net/tcp on this system")]

LISTEN = "0A"


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:  # gone meanwhile
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _address(field: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, port = field.split(":")
    raw = bytes.fromhex(host)  # /proc writes each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw), int(port, 16)


def listening_sockets(pids: list[int]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket in LISTEN state held by `pids`."""
    owner = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    owner[link[8:-1]] = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:  # gone meanwhile, or a descriptor closed while listed
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN and fields[9] in owner:
                address, port = _address(fields[1])
                found.append((str(address), port, owner[fields[9]]))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def test_a_local_run_listens_on_loopback_only():
    import ray

    assert not ray.is_initialized()  # init_ray starts the Ray under test
    config = load_config(None, ["runtime.threads=1", f"runtime.start_timeout_s={RAY_START_TIMEOUT_S}"])
    workers = start_workers(config, run_id="loopback")
    try:
        sockets = listening_sockets(process_tree(os.getpid()))
    finally:
        workers.shutdown()
    for row in sorted(sockets):
        print(*row)
    names = {name for _, _, name in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the listing found Ray's own servers
    assert any(name.startswith("ray::") for name in names), sockets  # and the actors' workers
    outside = [row for row in sockets if not is_loopback(row[0])]
    assert not outside, f"listening outside loopback: {outside}"

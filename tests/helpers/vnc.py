"""Press a key on a QEMU guest's keyboard through its VNC server, as a user at the console would.

The tiny guest's integrity loop ends when a key is pressed (guest/strato-integrity), so a test lets the
guest write for as long as its moves take, with a generous SECONDS as the ceiling, instead of waiting
for a fixed time chosen for the slowest machine. QEMU's VNC here has no password (security type None,
RFB 3.8)."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

KEYSYM_SPACE = 0x20


def vnc_port_of(instance_name: str, under: str | Path) -> int:
    """The VNC port of the running QEMU of `instance_name` started by an agent whose data dir is under
    `under`: the agent asked QEMU for it (query-vnc) and keeps it in the VM's runtime.json."""
    for runtime in sorted(Path(under).glob(f"**/vms/{instance_name}/runtime.json")):
        port = json.loads(runtime.read_text()).get("vnc_port")
        if isinstance(port, int):
            return port
    raise LookupError(f"no VNC port of {instance_name} under {under}")


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the VNC server closed the connection")
        data += chunk
    return data


def press_key(port: int, keysym: int = KEYSYM_SPACE, host: str = "127.0.0.1") -> None:
    """Connect, shake hands (RFB 3.8, no authentication, shared), send the key down and up, close."""
    with socket.create_connection((host, port), timeout=10) as sock:
        version = _read(sock, 12)
        if not version.startswith(b"RFB 003."):
            raise ConnectionError(f"not a VNC server: {version!r}")
        sock.sendall(b"RFB 003.008\n")
        count = _read(sock, 1)[0]
        types = _read(sock, count)
        if 1 not in types:
            raise ConnectionError(f"the VNC server wants authentication: types {list(types)}")
        sock.sendall(b"\x01")
        if struct.unpack(">I", _read(sock, 4))[0] != 0:
            raise ConnectionError("the VNC server refused the connection")
        sock.sendall(b"\x01")  # ClientInit: shared
        _width, _height = struct.unpack(">HH", _read(sock, 4))
        _read(sock, 16)  # pixel format
        (name_len,) = struct.unpack(">I", _read(sock, 4))
        _read(sock, name_len)
        for down in (1, 0):
            sock.sendall(struct.pack(">BBxxI", 4, down, keysym))


STOPPED = "STRATO-INTEGRITY LOOP-STOPPED"


def end_loop(port: int, console: Callable[[], str], timeout: float = 180.0) -> None:
    """Press a key until the guest's console shows its running integrity loop stopped by it. The guest
    sees only keys pressed once its loop's watcher has opened the keyboard (a moment after LOOP-START,
    longer on a loaded machine), so one press may be missed: press again every few seconds."""
    before = console().count(STOPPED)
    deadline = time.monotonic() + timeout
    while True:
        press_key(port)
        wait_until = time.monotonic() + 3.0
        while time.monotonic() < wait_until:
            if console().count(STOPPED) > before:
                return
            time.sleep(0.2)
        assert time.monotonic() < deadline, f"the guest's loop did not stop on a key:\n{console()[-2000:]}"


def end_guest_loop(instance_name: str, under: str | Path, console: Callable[[], str], timeout: float = 180.0) -> None:
    """end_loop on the VM of an agent whose data dir is under `under`."""
    end_loop(vnc_port_of(instance_name, under), console, timeout)

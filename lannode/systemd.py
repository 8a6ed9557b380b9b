"""systemd integration: sd_notify messages and the service unit.

``notify`` speaks the sd_notify datagram protocol to ``$NOTIFY_SOCKET`` (a path,
or an abstract socket written ``@name``) without libsystemd: READY=1 once the API
answers, STOPPING=1 on shutdown, WATCHDOG=1 every half ``$WATCHDOG_USEC``. Off
systemd, with no NOTIFY_SOCKET, every call is a cheap no-op.

``render_unit`` writes the unit ``lannode service install`` puts in place:
Type=notify, Restart=on-failure, a watchdog and the sandboxing that fits a daemon
that only needs its state directory and the network.
"""

from __future__ import annotations

import os
import pwd
import shlex
import socket
import sys
from pathlib import Path

UNIT_NAME = "lannode.service"
WATCHDOG_SEC = 30


def notify(message: str) -> bool:
    """Send one sd_notify datagram; False when not under systemd or the socket is gone."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half the timeout), or None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


def default_executable() -> str:
    """The absolute path of the ``lannode`` command of this installation."""
    candidate = Path(sys.executable).with_name("lannode")
    if candidate.exists():
        return str(candidate)
    return str(Path(sys.argv[0]).absolute())


def render_unit(*, user: bool, executable: str, run_as: str | None = None, extra_args: str = "") -> str:
    """The unit text. A user unit runs in the person's session; a system unit is sandboxed."""
    exec_line = shlex.join([executable, "up"]) + (f" {extra_args}" if extra_args else "")
    lines = [
        "[Unit]",
        "Description=lannode: serverless LAN chat, calls, file drop and drive",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_line}",
        "Restart=on-failure",
        "RestartSec=2",
        f"WatchdogSec={WATCHDOG_SEC}",
        "TimeoutStopSec=10",
        "KillMode=mixed",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "SystemCallArchitectures=native",
    ]
    if not user:
        home_protection = "read-only" if executable.startswith(("/home/", "/root/")) else "yes"
        lines += [
            f"User={run_as}" if run_as else "DynamicUser=yes",
            "StateDirectory=lannode",
            "StateDirectoryMode=0700",
            "Environment=LANNODE_HOME=%S/lannode",
            "ProtectSystem=strict",
            f"ProtectHome={home_protection}",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "RestrictNamespaces=yes",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "CapabilityBoundingSet=",
            "AmbientCapabilities=",
        ]
    lines += ["", "[Install]", f"WantedBy={'default.target' if user else 'multi-user.target'}", ""]
    return "\n".join(lines)


def unit_dir(user: bool) -> Path:
    if user:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "systemd" / "user"
    return Path("/etc/systemd/system")


def install(*, user: bool, dest: Path | None = None, run_as: str | None = None, executable: str | None = None) -> Path:
    """Write the unit and return its path. Enabling it is left to systemctl, as printed."""
    if run_as is not None:
        try:
            pwd.getpwnam(run_as)
        except KeyError:
            raise ValueError(f"no such user: {run_as}") from None
    directory = dest or unit_dir(user)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / UNIT_NAME
    text = render_unit(user=user, executable=executable or default_executable(), run_as=run_as)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path

"""`pyvpn-wg`: wireguard-go's command line, so that wg-quick runs pyvpn as its
userspace WireGuard (WG_QUICK_USERSPACE_IMPLEMENTATION=pyvpn-wg). It makes the
device and the UAPI socket and takes everything else over UAPI (daemon.up_device).

Without -f it goes to the background as wireguard-go does (main.go), but by
re-executing itself in the foreground in a new session rather than forking, as
the native plane's threads must not be forked: the parent waits on a pipe for
the child's readiness byte, or its one-line error, and exits with either."""

import importlib.metadata
import logging
import os
import select
import subprocess
import sys
import time

from .control.config import DATAPATHS, IFNAME, IFNAME_RULE
from .daemon import SetupError, up_device
from .planes.workers import AUTO, workers_setting

PROG = "pyvpn-wg"
READY_FD = "PYVPN_WG_READY_FD"  # the pipe's write end, in the re-executed child
READY = b"\0"
START_TIMEOUT = 30.0
EXIT_SETUP_FAILED = 1  # wireguard-go's ExitSetupFailed
EXIT_USAGE = 2
# LOG_LEVEL as wireguard-go reads it (main.go): verbose (or debug) logs everything,
# error only errors, silent nothing; unset or unknown means error.
LOG_LEVELS = {"verbose": logging.DEBUG, "debug": logging.DEBUG, "error": logging.WARNING}
USAGE = f"Usage: {PROG} [-f/--foreground] INTERFACE-NAME\n"
HELP = (
    USAGE + "\nA userspace WireGuard device for wg-quick: creates the tun device INTERFACE-NAME\n"
    "and its UAPI socket /var/run/wireguard/INTERFACE-NAME.sock, and takes its whole\n"
    "configuration over UAPI (wg setconf, wg set). Without -f it returns once both\n"
    "are ready and keeps running in the background. It stops, removing its socket,\n"
    "on SIGTERM, SIGINT or the device's deletion. LOG_LEVEL=verbose|error|silent;\n"
    "PYVPN_DATAPATH=auto|native|python picks the data plane (default auto);\n"
    "PYVPN_WORKERS=auto|N its crypto workers beside the I/O worker (default auto).\n"
)


class WgFormatter(logging.Formatter):
    """wireguard-go's log lines (device/logger.go): "DEBUG: (wg0) 2006/01/02 15:04:05 ..."
    for what it logs with Verbosef, "ERROR: (wg0) ..." for Errorf."""

    def __init__(self, name: str) -> None:
        super().__init__(datefmt="%Y/%m/%d %H:%M:%S")
        self.name = name

    def format(self, record: logging.LogRecord) -> str:
        level = "ERROR" if record.levelno >= logging.WARNING else "DEBUG"
        when = self.formatTime(record, self.datefmt)
        return f"{level}: ({self.name}) {when} {record.getMessage()}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        print(f"{PROG} (pyvpn) {importlib.metadata.version('pyvpn')}")
        return 0
    if args in (["--help"], ["-h"]):
        sys.stdout.write(HELP)
        return 0
    foreground = bool(args) and args[0] in ("-f", "--foreground")
    names = args[1:] if foreground else args
    if len(names) != 1 or names[0].startswith("-"):
        sys.stderr.write(USAGE)
        return EXIT_USAGE
    (name,) = names
    if not IFNAME.fullmatch(name):
        fail(f"{name[:40]!r} is not an interface name ({IFNAME_RULE})")
        return EXIT_USAGE
    if os.geteuid() != 0:
        fail(f"{name}: needs root (CAP_NET_ADMIN) to create the device")
        return EXIT_SETUP_FAILED
    datapath = os.environ.get("PYVPN_DATAPATH", "auto")
    if datapath not in DATAPATHS:
        fail(f"PYVPN_DATAPATH={datapath[:40]!r}: one of {', '.join(DATAPATHS)}")
        return EXIT_USAGE
    try:
        workers = workers_setting(os.environ.get("PYVPN_WORKERS", AUTO))
    except ValueError as e:
        fail(f"PYVPN_WORKERS {e}")
        return EXIT_USAGE
    level = os.environ.get("LOG_LEVEL", "")
    if foreground:
        return run(name, level, datapath, workers)
    return daemonize(name, level)


def fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def run(name: str, level: str, datapath: str, workers: int | str) -> int:
    """In the foreground: serve until stopped. A parent waiting on READY_FD hears
    READY once the UAPI socket answers, or the error."""
    parent = os.environ.pop(READY_FD, None)
    pipe = [int(parent)] if parent is not None else []  # open until written to
    handler = logging.StreamHandler(sys.stdout)  # where wireguard-go logs, errors too
    handler.setFormatter(WgFormatter(name))
    root = logging.getLogger()
    root.addHandler(handler)
    if level == "silent":
        root.setLevel(logging.CRITICAL + 1)
    else:
        root.setLevel(LOG_LEVELS.get(level, logging.WARNING))
    # Below errors, only pyvpn's own: asyncio's and pyroute2's debugging is not the device's.
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.name.startswith("pyvpn"))

    def tell(message: bytes) -> None:
        while pipe:
            fd = pipe.pop()
            os.write(fd, message)
            os.close(fd)

    try:
        return up_device(name, lambda: tell(READY), datapath, workers)
    except SetupError as e:
        if pipe:
            tell(f"{name}: {e}".encode())  # the parent says it; our stderr may be /dev/null
        else:
            fail(f"{name}: {e}")
        return EXIT_SETUP_FAILED
    except KeyboardInterrupt:
        return 130


def daemonize(name: str, level: str) -> int:
    """Start ourselves with -f in a new session and return once it is ready. The
    child's output goes where wireguard-go sends it: to ours if LOG_LEVEL asks
    for a log, to /dev/null otherwise."""
    read_end, write_end = os.pipe()
    quiet = level in ("", "silent")
    output = subprocess.DEVNULL if quiet else None
    try:
        child = subprocess.Popen(
            # -P: -m alone would put the current directory first on the import path,
            # and wg-quick runs us from wherever root happens to be (a ./tunnel/
            # there would run as root). The child imports the package from where
            # this process did, as wireguard-go re-executes its own binary.
            [sys.executable, "-P", "-m", "tunnel.pyvpn_wg", "--foreground", name],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            pass_fds=(write_end,),
            start_new_session=True,
            env={**os.environ, READY_FD: str(write_end), "PYTHONPATH": _import_path()},
        )
    except OSError as e:
        os.close(read_end)
        os.close(write_end)
        fail(f"{name}: cannot start the daemon: {e.strerror}")
        return EXIT_SETUP_FAILED
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = _answer(pipe.fileno(), time.monotonic() + START_TIMEOUT)
    if answer == READY:
        return 0
    if answer is None:
        child.kill()
        answer = f"{name}: not ready within {START_TIMEOUT:g} s".encode()
    code = child.wait()
    fail(answer.decode(errors="replace") or f"{name}: the daemon exited with status {code}")
    return EXIT_SETUP_FAILED


def _import_path() -> str:
    """The child's PYTHONPATH: ours, and where this package came from if only the
    first entry of our path holds it (the script's directory, or the current one
    for `python -m` in a checkout), which -P leaves out of the child's."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ours = os.environ.get("PYTHONPATH", "")
    known = {os.path.abspath(p) for p in sys.path[1:] if p}
    return os.pathsep.join(filter(None, [ours, None if root in known else root]))


def _answer(fd: int, deadline: float) -> bytes | None:
    """What the child wrote before the pipe closed (READY, an error, or nothing if
    it died); None if the pipe is still open at the deadline."""
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk


if __name__ == "__main__":
    sys.exit(main())

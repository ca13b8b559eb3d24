"""The `pyvpn` command line. Usage and config errors are one line on stderr with
exit status 2; runtime failures exit 1; nothing prints a traceback."""

import argparse
import importlib
import importlib.util
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from tunnel.control import uapi_client
from tunnel.control.config import Config, ConfigError, load, load_source, read
from tunnel.control.mesh import FORMATS, write_mesh
from tunnel.protocol import keys

# What `pyvpn demo` and `pyvpn bench` need beyond the tunnel's own packages:
# pyproject.toml's [bench] extra, which a plain `pip install pyvpn` leaves out.
LAB_EXTRA = ("rich", "matplotlib")
LAB_COMMANDS = ("demo", "bench")

# What a config argument may also be (config.config_file).
BARE = "; a bare NAME is /etc/pyvpn/NAME.toml or /etc/wireguard/NAME.conf"


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Version(argparse.Action):
    """argparse's own version action, but reading the version only when asked:
    importlib.metadata takes longer to load than `pyvpn show` may."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        import importlib.metadata

        print(f"pyvpn {importlib.metadata.version('pyvpn')}")
        parser.exit()


def build_parser(command: str | None = None) -> Parser:
    """The whole command line; given the command word, only the lab plugin it
    names is imported for its options (they load rich and more, which `pyvpn
    show` on a busy hub should not wait for)."""
    parser = Parser(
        prog="pyvpn", description="A WireGuard-protocol VPN tunnel, tun (L3) or tap (L2)."
    )
    parser.add_argument("--version", action=Version, nargs=0, help="show the version and exit")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    p = sub.add_parser("up", help="bring a tunnel up in the foreground")
    p.add_argument(
        "config", help=f"the peer's config file: pyvpn's TOML or wg-quick's NAME.conf{BARE}"
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log pyvpn's every event (handshakes, sessions, roaming); twice: "
        "the libraries' debugging too",
    )
    p = sub.add_parser("reload", help="apply a changed config to its running tunnel")
    p.add_argument("config", help=f"the config file the tunnel runs from{BARE}")
    p = sub.add_parser("down", help="stop a running tunnel")
    p.add_argument("name", help="the tunnel's device name")
    p = sub.add_parser("show", help="show running tunnels, like wg show")
    p.add_argument("name", nargs="?", help="one tunnel's device name (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("convert", help="print a config in the other format: TOML <-> wg-quick")
    p.add_argument("config", help=f"a TOML config or a wg-quick NAME.conf{BARE}")
    p.add_argument("-o", "--output", help="write it to this file (mode 0600) instead of stdout")
    p.add_argument(
        "--lossy",
        action="store_true",
        help="leave out what a wg-quick file cannot hold (pyvpn's own keys), naming it on stderr",
    )
    p = sub.add_parser("metrics", help="serve the tunnels' figures to Prometheus")
    p.add_argument(  # prometheus-wireguard-exporter's port, on loopback only
        "--listen", default="127.0.0.1:9586", metavar="HOST:PORT", help="(default: %(default)s)"
    )
    p.add_argument(
        "-i", "--interface", action="append", default=[], help="only this tunnel (repeatable)"
    )
    sub.add_parser("genkey", help="print a new private key")
    sub.add_parser("pubkey", help="read a private key on stdin, print its public key")
    sub.add_parser("genpsk", help="print a new preshared key")
    p = sub.add_parser("mesh", help="write a config per host for a full mesh or a hub")
    p.add_argument("hosts", help="the hosts file (TOML, docs/configuration.md#pyvpn-mesh)")
    p.add_argument("--out", required=True, metavar="DIR", help="where configs and keys go")
    p.add_argument("--format", choices=tuple(FORMATS), default="toml", help="default: toml")
    add_fleet_parser(sub)
    for name, help_text in (
        ("demo", "two namespaces linked by pyvpn, tun and tap"),
        ("bench", "benchmark pyvpn against veth and other VPNs"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(module=name)
        # `pyvpn --help` lists the lab's commands, with their options when installed.
        if command in (None, name) and not lab_missing():
            _plugin(name).add_arguments(p)
    return parser


def add_fleet_parser(sub: Any) -> None:
    """`pyvpn fleet init|admit|revoke|list`, each on the fleet's DIR."""
    fleet = sub.add_parser("fleet", help="a fleet of hosts that find each other through etcd")
    words = fleet.add_subparsers(
        dest="fleet_command", required=True, metavar="COMMAND", parser_class=Parser
    )
    directory = "the fleet's directory: fleet.key (the signing key) and fleet.toml"
    p = words.add_parser("init", help="make a fleet: its signing key and its settings")
    p.add_argument("dir", metavar="DIR", help=directory)
    p.add_argument("--registry", required=True, metavar="URL[,URL...]", help="etcd's client URLs")
    p.add_argument("--prefix", help="where the fleet's keys live in etcd (default: /pyvpn/DIR)")
    p.add_argument("--stun", metavar="HOST:PORT", help="the STUN server")
    p.add_argument("--relay", metavar="turn:USER:PASS@HOST:PORT", help="the TURN server")
    p = words.add_parser("admit", help="sign a host's admission and store it in the registry")
    p.add_argument("dir", metavar="DIR", help=directory)
    p.add_argument("name", metavar="NAME", help="the host's name")
    p.add_argument("--address", required=True, metavar="CIDR", help="its tunnel address")
    p.add_argument(
        "--subnet", action="append", default=[], metavar="CIDR",
        help="a network behind it (repeatable)",
    )  # fmt: skip
    p.add_argument("--mode", choices=("tun", "tap"), default="tun", help="default: tun")
    p.add_argument("--public-key", metavar="KEY", help="its key (default: make a key pair)")
    p.add_argument("--out", metavar="FILE", help="write its config (mode 0600), with the key")
    p.add_argument(
        "--valid-days", type=float, metavar="DAYS", help="expire after this (default: never)"
    )
    p = words.add_parser("revoke", help="put a host out of the fleet, for good")
    p.add_argument("dir", metavar="DIR", help=directory)
    p.add_argument("name", metavar="NAME", help="the host's name")
    p = words.add_parser("list", help="the fleet's hosts: address, online, endpoints")
    p.add_argument("dir", metavar="DIR", help=directory)


def lab_missing() -> list[str]:
    """The packages of the [bench] extra that are not installed (found, not imported)."""
    return [name for name in LAB_EXTRA if importlib.util.find_spec(name) is None]


def _plugin(name: str) -> Any:
    return importlib.import_module(f"tunnel.lab.{name}")


def main(argv: list[str] | None = None) -> int:
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    if words and words[0] in LAB_COMMANDS and lab_missing():
        print(
            f"pyvpn: {words[0]} needs {', '.join(lab_missing())}: pip install 'pyvpn[bench]'",
            file=sys.stderr,
        )
        return 2
    args = build_parser(words[0] if words else None).parse_args(argv)
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a reader gone away is caught, not at exit
        return status
    except (ConfigError, UsageError) as e:
        print(f"pyvpn: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`pyvpn show | head`): quiet, as a tool killed by
        # SIGPIPE is, and with stdout on /dev/null so that its flush at exit
        # cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def cmd_up(args: argparse.Namespace) -> int:
    from .daemon import SetupError, up
    from .fleet import settings as fleet_settings

    if os.geteuid() != 0:
        raise UsageError("up needs root (CAP_NET_ADMIN) to create the device")
    config = load(args.config)
    fleet = fleet_settings.of_config(config)  # its errors are the config's, before anything is made
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO,
        format=f"%(asctime)s pyvpn[{config.interface.name}] %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.verbose:
        logging.getLogger("pyvpn").setLevel(logging.DEBUG)
    try:
        return up(config, fleet)
    except SetupError as e:
        print(f"pyvpn: {config.interface.name}: {e}", file=sys.stderr)
        return 1


def cmd_reload(args: argparse.Namespace) -> int:
    config = load(args.config)
    c = config.interface
    for warning in config.warnings:
        print(f"pyvpn: {warning}", file=sys.stderr)
    try:
        status = uapi_client.status(c.name)
        if status["mode"] != c.mode:
            print(
                f"pyvpn: {c.name} runs in {status['mode']} mode, {config.path} says {c.mode}: "
                "restart it to change the mode",
                file=sys.stderr,
            )
            return 1
        unapplied = restart_needed(config, status)
        # A fleet's peers are its agent's to change, not the file's.
        running = [keys.decode(p["public_key"]) for p in status["peers"] if "fleet" not in p]
        uapi_client.request(c.name, uapi_client.sync_request(config, running))
    except uapi_client.NotRunning:
        print(f"pyvpn: no tunnel named {c.name} is running", file=sys.stderr)
        return 1
    except uapi_client.NotPermitted as e:
        print(f"pyvpn: {e.strerror}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"pyvpn: {e.strerror} (the tunnel's log says why)", file=sys.stderr)
        return 1
    wanted = {p.public_key for p in config.peers}
    added, removed = len(wanted - set(running)), len(set(running) - wanted)
    print(f"{c.name}: reloaded from {config.path}: peers added {added}, removed {removed}")
    for key, now, wanted in unapplied:
        print(
            f"pyvpn: {c.name} runs with {key} {now}, {config.path} says {wanted}: "
            "restart it to apply that",
            file=sys.stderr,
        )
    return 0


def restart_needed(config: Config, status: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Where the config differs from the running tunnel in what only a restart
    applies (reload applies keys, port, fwmark and peers): (key, running, config)
    for each. An mtu the config leaves to the underlay was picked at start."""
    from .daemon import choose_datapath
    from .planes.workers import crypto_workers

    c = config.interface
    try:
        datapath = choose_datapath(config)
    except ConfigError:  # native asked for, not built for this Python: as the daemon says
        datapath = status["datapath"]
    pairs = [
        ("mtu", status["mtu"], status["mtu"] if c.mtu is None else c.mtu),
        ("table", status["table"], c.table),
        ("datapath", status["datapath"], datapath),
    ]
    # Daemons of older pyvpn versions report fewer settings: only those they report.
    if "addresses" in status:
        # A fleet host's address comes from its admission, not from the file.
        fleet = [status["fleet"]["address"]] if "fleet" in status else []
        configured = _listed([*map(str, c.addresses), *fleet])
        pairs.append(("address", _listed(status["addresses"]), configured))
    if "bridge" in status:
        pairs.append(("bridge", status["bridge"] or "none", c.bridge or "none"))
    if "user" in status:
        pairs.append(("user", status["user"] or "root", c.user or "root"))
    if "mac_ageing" in status:
        pairs.append(("mac_ageing", int(status["mac_ageing"]), int(c.mac_ageing)))
    if "crypto_workers" in status and datapath == "native":
        pairs.append(("workers", status["crypto_workers"], crypto_workers(c.workers)))
    return [(key, str(now), str(wanted)) for key, now, wanted in pairs if now != wanted]


def _listed(addresses: Iterable[str]) -> str:
    return ", ".join(sorted(addresses)) or "none"


def _ask(name: str, question: Callable[[str], Any]) -> Any:
    """question(name), the running tunnel's answer; None once one line on stderr
    has said why there is none."""
    try:
        return question(name)
    except uapi_client.NotRunning:
        print(f"pyvpn: no tunnel named {name} is running", file=sys.stderr)
    except uapi_client.NotPyvpn:
        print(f"pyvpn: {name} is not a pyvpn tunnel: wg show {name}", file=sys.stderr)
    except (uapi_client.NotAnswering, uapi_client.NotPermitted) as e:
        print(f"pyvpn: {e.strerror}", file=sys.stderr)
    return None


def cmd_down(args: argparse.Namespace) -> int:
    pid = _ask(args.name, uapi_client.server_pid)
    if pid is None:
        return 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while uapi_client.socket_path(args.name).exists():
        if time.monotonic() > deadline:
            print(f"pyvpn: {args.name} (pid {pid}) did not stop within 10 s", file=sys.stderr)
            return 1
        time.sleep(0.05)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    # The JSON snapshot, or the text the tunnel renders of it.
    question = uapi_client.status if args.json else uapi_client.shown
    if args.name:
        answer = _ask(args.name, question)
        if answer is None:
            return 1
        print(json.dumps(answer, indent=2) if args.json else answer)
        return 0
    answers, answered = [], True
    for name in uapi_client.running_names():
        try:
            answers.append(question(name))
        except (uapi_client.NotRunning, uapi_client.NotPyvpn):
            continue  # gone since it was listed, or another WireGuard's (wg show lists it)
        except (uapi_client.NotAnswering, uapi_client.NotPermitted) as e:
            print(f"pyvpn: {e.strerror}", file=sys.stderr)
            answered = False
    if args.json:
        print(json.dumps(answers, indent=2))
    elif answers:
        print("\n\n".join(answers))
    return 0 if answered else 1


def cmd_metrics(args: argparse.Namespace) -> int:
    from .control import metrics
    from .host import sd_notify

    try:
        host, port = metrics.parse_listen(args.listen)
    except metrics.ListenError as e:
        raise UsageError(str(e)) from None
    stop = {signal.SIGINT, signal.SIGTERM}
    # Blocked before the server's thread starts, which inherits the mask: only sigwait sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        metrics.serve(host, port, args.interface)
    except socket.gaierror:
        raise UsageError(f"--listen {args.listen}: no such host: {host}") from None
    except OSError as e:
        print(f"pyvpn: cannot listen on {args.listen}: {e.strerror}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="pyvpn metrics: %(message)s")
    logging.getLogger("pyvpn").info("serving http://%s/metrics", args.listen)
    sd_notify.notify("READY=1")
    signal.sigwait(stop)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """TOML to wg-quick or back, of a config that loads: what comes out loads too."""
    from tunnel.control.convert import ConvertError, pyvpn_only, to_toml, to_wg_quick

    source = read(args.config)
    for warning in load_source(source).warnings:
        print(f"pyvpn: {warning}", file=sys.stderr)
    if source.format == "wg-quick":
        text = to_toml(source.data)
    else:
        name = None
        if args.output:
            # wg-quick names the interface after its file: check what the file says.
            if not args.output.endswith(".conf"):
                raise UsageError(f"{args.output}: a wg-quick file is named NAME.conf")
            name = os.path.basename(args.output).removesuffix(".conf")
        if source.data["interface"].get("mode") == "tap":
            raise ConfigError(
                source.path, "interface.mode", "tap: a wg-quick file is always tun (L3)"
            )
        try:
            text = to_wg_quick(source.data, name, lossy=args.lossy)
        except ConvertError as e:
            hint = "" if args.lossy else " (--lossy leaves them out)"
            raise ConfigError(source.path, "", f"{e}{hint}") from None
        for key in pyvpn_only(source.data, name):
            print(f"pyvpn: {source.path}: {key}: left out", file=sys.stderr)
    if args.output:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # it holds a private key, also where the file was there before
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_genkey(args: argparse.Namespace) -> int:
    print(keys.encode(keys.generate_private_key()))
    return 0


def cmd_genpsk(args: argparse.Namespace) -> int:
    print(keys.encode(keys.generate_preshared_key()))
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    try:
        private = keys.decode(sys.stdin.read())
    except keys.InvalidKey as e:
        raise UsageError(f"pubkey: stdin is not a private key: {e}") from None
    print(keys.encode(keys.public_key(private)))
    return 0


def cmd_mesh(args: argparse.Namespace) -> int:
    try:
        lines, warnings = write_mesh(args.hosts, args.out, args.format)
    except OSError as e:
        print(f"pyvpn: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"pyvpn: {warning}", file=sys.stderr)
    for line in lines:
        print(line)
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from .fleet import commands
    from .fleet.registry import RegistryError

    try:
        if args.fleet_command == "init":
            registry = [url for url in args.registry.split(",") if url]
            lines = commands.init(args.dir, registry, args.prefix, args.stun, args.relay)
        else:
            fleet = commands.open_fleet(args.dir)
            for warning in fleet.warnings:
                print(f"pyvpn: {warning}", file=sys.stderr)
            if args.fleet_command == "admit":
                lines = commands.admit(
                    fleet, args.name, args.address, args.subnet, args.mode, args.public_key,
                    args.out, args.valid_days,
                )  # fmt: skip
            elif args.fleet_command == "revoke":
                lines = commands.revoke(fleet, args.name)
            else:
                lines = commands.listing(fleet)
    except (commands.FleetError, RegistryError) as e:
        print(f"pyvpn: fleet {args.fleet_command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"pyvpn: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


def cmd_plugin(args: argparse.Namespace) -> int:
    return _plugin(args.module).run(args)


COMMANDS = {
    "up": cmd_up,
    "reload": cmd_reload,
    "down": cmd_down,
    "show": cmd_show,
    "convert": cmd_convert,
    "metrics": cmd_metrics,
    "genkey": cmd_genkey,
    "pubkey": cmd_pubkey,
    "genpsk": cmd_genpsk,
    "mesh": cmd_mesh,
    "fleet": cmd_fleet,
    "demo": cmd_plugin,
    "bench": cmd_plugin,
}

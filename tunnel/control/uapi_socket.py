"""Where a tunnel's UAPI socket lives: wireguard-go's /var/run/wireguard/NAME.sock,
where wg(8) looks. Apart from uapi.py (the server's protocol, which needs the core)
so that clients such as `pyvpn show` load nothing else."""

from pathlib import Path

SOCKET_DIR = Path("/var/run/wireguard")


def socket_path(name: str) -> Path:
    return SOCKET_DIR / f"{name}.sock"

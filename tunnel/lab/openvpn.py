"""OpenVPN as a bench contender: a throwaway PKI and a peer-to-peer TLS tunnel.

Peer-to-peer (no server mode, no client pool) is the setup closest to a
WireGuard pair: two peers, one tunnel. TLS with certificates from a CA made
here and thrown away with the run; an AEAD data cipher, as WireGuard has.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .testbed import Daemon, run_command, wait_for

CIPHER = "AES-256-GCM"
PORT = 1194
READY = "Initialization Sequence Completed"
# Outer bytes a data packet adds besides IP + UDP: opcode/peer-id 4, packet id 4, GCM tag 16.
DATA_OVERHEAD = 24


def make_pki(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """A CA and a server and a client certificate (P-256, valid two days) in `directory`."""
    d = Path(directory)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run_command(
        ["openssl", "req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
         "-days", "2", "-subj", "/CN=pyvpn-bench-ca",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    )  # fmt: skip
    files = {"ca": d / "ca.crt"}
    for role, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        ext = d / f"{role}.ext"
        # --remote-cert-tls checks key usage and extended key usage: give both.
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\n"
            f"extendedKeyUsage={usage}\n"
        )
        run_command(
            ["openssl", "req", *ec, "-keyout", str(d / f"{role}.key"),
             "-out", str(d / f"{role}.csr"), "-subj", f"/CN=pyvpn-bench-{role}"]
        )  # fmt: skip
        run_command(
            ["openssl", "x509", "-req", "-in", str(d / f"{role}.csr"), "-CA", str(d / "ca.crt"),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
             "-extfile", str(ext), "-out", str(d / f"{role}.crt")]
        )  # fmt: skip
        files[f"{role}_cert"] = d / f"{role}.crt"
        files[f"{role}_key"] = d / f"{role}.key"
    return files


def openvpn_argv(
    *,
    name: str,
    mode: str,
    role: str,
    pki: dict[str, Path],
    local: str,
    remote: str,
    inner: str,
    inner_peer: str,
    mtu: int,
) -> list[str]:
    """One peer of a p2p TLS tunnel; `role` is "server" or "client" (who answers TLS)."""
    other = "client" if role == "server" else "server"
    ifconfig = [inner, inner_peer] if mode == "tun" else [inner, "255.255.255.0"]
    return [
        "openvpn",
        "--dev", name, "--dev-type", mode,
        "--proto", "udp", "--local", local, "--lport", str(PORT),
        "--remote", remote, "--rport", str(PORT),
        f"--tls-{role}", "--dh", "none",
        "--ca", str(pki["ca"]),
        "--cert", str(pki[f"{role}_cert"]), "--key", str(pki[f"{role}_key"]),
        "--remote-cert-tls", other,
        "--data-ciphers", CIPHER, "--cipher", CIPHER,
        "--ifconfig", *ifconfig,
        "--tun-mtu", str(mtu),
        # Userspace data path: the ovpn-dco kernel module would not be a like-for-like
        # contender for userspace tunnels (and is rarely loaded anyway).
        "--disable-dco",
        "--verb", "3",
    ]  # fmt: skip


def wait_ready(daemons: Sequence[Daemon], timeout: float = 20.0) -> None:
    """Both peers report the TLS handshake done and the device configured."""
    for daemon in daemons:
        wait_for(daemon, lambda d=daemon: READY in d.output(), "TLS handshake", timeout)

"""Real traffic through a tunnel for the namespace tests: a TCP transfer whose
bytes are compared end to end, and a long-lived TCP stream that reports stalls."""

import hashlib
import os
import subprocess
import sys
import tempfile
import textwrap

from tunnel.testbed import Namespace

SERVER = textwrap.dedent("""
    import hashlib, socket, sys
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[1], 5201)); srv.listen(1)
    print("listening", flush=True)
    conn, _ = srv.accept()
    digest, total = hashlib.sha256(), 0
    while chunk := conn.recv(1 << 16):
        digest.update(chunk); total += len(chunk)
    print(total, digest.hexdigest(), flush=True)
""")

CLIENT = textwrap.dedent("""
    import socket, sys, time
    data = open(sys.argv[2], 'rb').read()
    deadline = time.monotonic() + 15
    while True:
        try:
            conn = socket.create_connection((sys.argv[1], 5201), timeout=60); break
        except OSError:
            if time.monotonic() > deadline: raise
            time.sleep(0.2)
    conn.sendall(data); conn.shutdown(socket.SHUT_WR); conn.recv(1); conn.close()
""")


def tcp_transfer(
    server: Namespace, client: Namespace, address: str, size: int, timeout: float = 120
) -> tuple[str, str]:
    """Send `size` random bytes over TCP to `address`; return (sent, received) sha256."""
    data = os.urandom(size)
    srv = server.popen(sys.executable, "-c", SERVER, address, stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "listening"
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            client.run(sys.executable, "-c", CLIENT, address, f.name, timeout=timeout)
        received = srv.stdout.readline().split()
        srv.wait(timeout=10)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    assert received and int(received[0]) == size, f"received {received}"
    return hashlib.sha256(data).hexdigest(), received[1]

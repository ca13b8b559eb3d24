"""An endpoint address as the core and every layer above it see one: a plain
(host, port) pair, the host an IP address literal without a scope."""

Address = tuple[str, int]


def format_address(address: Address) -> str:
    """host:port, an IPv6 host in brackets, as wg(8) prints endpoints."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

"""wg-quick's INI config files: which of its keys stand for which TOML key, and how
its text reads. The INI parser turns a file into the same TOML-shaped dict that
tunnel/control/config.py's parse() validates, with each key's line remembered, so
that an error can name `FILE:LINE: Key`."""

# wg-quick's own keys (wg-quick(8): Address, DNS, MTU, Table, the hooks, SaveConfig)
# and wg's (wg(8) CONFIGURATION FILE FORMAT), each with its TOML key. LISTS may be
# written as comma lists or repeated keys; HOOKS are repeated keys only, since a
# command may hold commas (wg-quick's parse_options appends each PreUp line whole).
INTERFACE = {
    "address": "Address",
    "listen_port": "ListenPort",
    "private_key": "PrivateKey",
    "dns": "DNS",
    "mtu": "MTU",
    "table": "Table",
    "fwmark": "FwMark",
    "pre_up": "PreUp",
    "post_up": "PostUp",
    "pre_down": "PreDown",
    "post_down": "PostDown",
    "save_config": "SaveConfig",
}
PEER = {
    "public_key": "PublicKey",
    "preshared_key": "PresharedKey",
    "allowed_ips": "AllowedIPs",
    "endpoint": "Endpoint",
    "persistent_keepalive": "PersistentKeepalive",
}
LISTS = {"address", "dns", "allowed_ips"}
HOOKS = ("pre_up", "post_up", "pre_down", "post_down")

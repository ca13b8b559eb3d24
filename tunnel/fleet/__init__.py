"""A fleet: hosts that find each other through etcd, admitted by signed records
(record.py, roster.py), configured by fleet.toml (settings.py), administered by
`pyvpn fleet` (commands.py) and joined by each running host's agent (agent.py);
they learn their public mappings with STUN from their WireGuard socket
(stun.py) and fall back to a TURN relay on coturn where no direct path works
(relay.py)."""

"""pyvpn: a WireGuard-protocol VPN tunnel, tun (L3) or tap (L2).

The layers, each importing only those below it (tests/test_layers.py):
protocol/ (the WireGuard protocol, sans-IO), core/ (the interface that turns
datagrams, device packets and ticks into actions, sans-IO), host/ (the OS edge),
planes/ (the Python and native data planes), control/ (config, UAPI, status),
fleet/ (signed admissions in etcd, the running host's agent, STUN, TURN), lab/ (demo, bench,
test beds); cli.py and daemon.py on top."""

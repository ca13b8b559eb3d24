"""The lab behind `pyvpn demo` and `pyvpn bench`, and the test beds the suite
builds: network namespaces, veth links, tunnels between them, measurements."""

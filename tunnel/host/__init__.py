"""The OS edge: the TUN/TAP device, the UDP socket, netlink, nftables, the full
tunnel's routing policy, privileges and systemd notification."""

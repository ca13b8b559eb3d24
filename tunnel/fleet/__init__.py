"""A fleet: hosts that find each other through a registry (etcd), learn their
public mappings with STUN from their WireGuard socket, and fall back to a TURN
relay on coturn where no direct path works."""

"""The sans-IO interface: datagrams, device packets and clock ticks in, actions
out (core/interface.py joins the concerns, one module each)."""

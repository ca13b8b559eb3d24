"""The WireGuard protocol, pure and sans-IO: messages, the Noise handshake,
cookies, keypairs and replay windows, timers, cryptokey routing, rate limits.
Bytes and time in, bytes out; no sockets, clocks or event loops."""

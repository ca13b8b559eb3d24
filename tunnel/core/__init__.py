"""The sans-IO interface: datagrams, device packets and clock ticks in, actions
out. core/interface.py holds the state and joins the concerns; each concern is a
module of functions over the state (state.State, the kernel's struct wg_device).

What each of those modules offers the others and the layers above is listed
here, as queueing.h lists the kernel's "send.c APIs"; everything else in a module
is its own, and tests/test_layers.py holds every use across modules to these
lists."""

API = {
    # What is kept, and the bookkeeping every path shares (peer.c, noise.c).
    "state": (
        "State",
        "adopt",
        "authenticated",
        "clear_keypairs",
        "count_tx",
        "drop_handshake_index",
        "forget_indices",
        "handshake_complete",
        "install",
        "log",
        "mac_conflict",
        "mode_name",
        "new_index",
        "report_mismatch",
        "retire",
        "short",
    ),
    # Device packets toward peers; staging, initiations and keepalives.
    "send": (
        "answer_too_big",
        "flush_staged",
        "hold_over",
        "initiate",
        "keepalive",
        "need_key",
        "send_packets",
        "transmit_staged",
        "transport_sent",
        "unreachable",
    ),
    # Datagrams from the socket, and the transport events they come to.
    "receive": (
        "receive_consumed_initiation",
        "receive_datagrams",
        "session_confirmed",
        "transport_received",
    ),
    # What a peer's timers do when they fire (timers.c).
    "ticks": ("greet", "tick"),
}

"""The control plane: the config file, WireGuard's UAPI (server and client),
endpoint names followed, and the status snapshot that `show` prints."""

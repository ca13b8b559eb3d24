"""wg-quick's PreUp, PostUp, PreDown and PostDown: shell commands run by bash with
%i replaced by the interface name (wg-quick's execute_hooks). wg-quick evals each
in a subshell of its own `set -e -o pipefail` script; bash -e -o pipefail -c is
that subshell."""

import logging
import subprocess

log = logging.getLogger("pyvpn")


class HookError(Exception):
    """A hook that failed: which, and how, in one line."""


def run(label: str, commands: list[str], name: str) -> None:
    """Run each command in turn; HookError for the first that fails, as wg-quick
    stops at it."""
    for command in commands:
        command = command.replace("%i", name)
        log.info("%s: %s: %s", name, label, command)
        try:
            status = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", command], stdin=subprocess.DEVNULL
            ).returncode
        except OSError as e:
            raise HookError(f"{label} cannot run bash: {e.strerror}") from None
        if status:
            how = f"exit status {status}" if status > 0 else f"signal {-status}"
            raise HookError(f"{label} failed ({how}): {command}")

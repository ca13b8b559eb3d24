"""Writing a file that holds a key: readable by its owner only from the first byte,
and whole or not at all, as wg-quick's save_config writes FILE.tmp under umask 077
and moves it over FILE."""

import os
import tempfile
from pathlib import Path


def write_secret(path: str | os.PathLike[str], text: str) -> None:
    """Replace path with text, mode 0600. The temporary file is made beside path
    under a new name with O_EXCL and O_NOFOLLOW (tempfile.mkstemp), so that no
    leftover of an earlier run, of whatever mode, and no symlink planted where a
    fixed name would be, is written through; then synced and renamed over path."""
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    temporary = Path(name)
    try:
        os.fchmod(fd, 0o600)  # mkstemp's 0600 less the umask: the same whatever umask
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise

"""etcd as the fleet's registry, through etcd3gw: etcd's v3 API as JSON over
HTTP (the gRPC gateway every etcd from 3.4 serves on its client URL).

Blocking calls, for the commands and for the agent's worker threads. Each call
tries the fleet's client URLs in order and says, in one line, why none
answered (RegistryError). The watch is read here rather than through
etcd3gw's Watcher, which reads the stream in a thread of its own and drops its
end silently: resuming from a revision after an outage needs to see the end."""

import base64
import contextlib
import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_errors

from .settings import FleetSettings

log = logging.getLogger("pyvpn")

# Long enough for a loaded etcd, short enough that a host notices an outage soon.
TIMEOUT = 5.0


class RegistryError(Exception):
    """The registry did not answer, or refused: one line for the user."""


class Compacted(RegistryError):
    """A watch asked for a revision etcd has compacted away: read everything anew."""


@dataclass(frozen=True)
class Event:
    """One change under the prefix: a put (value) or a delete (value None)."""

    key: str
    value: bytes | None
    revision: int


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _range_end(prefix: str) -> str:
    """The key just past every key that starts with prefix (etcd's prefix range)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return _b64(bytes(raw))


class Registry:
    def __init__(self, settings: FleetSettings, timeout: float = TIMEOUT) -> None:
        self.urls = settings.registry
        self.timeout = timeout
        self.session = requests.Session()
        if settings.ca_file:
            self.session.verify = settings.ca_file
        if settings.cert_file and settings.key_file:
            self.session.cert = (settings.cert_file, settings.key_file)
        self.clients = [self._client(url) for url in self.urls]
        self.credentials: dict[str, str] | None = None
        if settings.user is not None and settings.password_file is not None:
            try:
                password = Path(settings.password_file).read_text().rstrip("\n")
            except OSError as e:
                raise RegistryError(f"{settings.password_file}: {e.strerror}") from None
            self.credentials = {"name": settings.user, "password": password}

    def _client(self, url: str) -> etcd3gw.Etcd3Client:
        parts = requests.utils.urlparse(url)
        return etcd3gw.Etcd3Client(
            host=parts.hostname, port=parts.port, protocol=parts.scheme,
            timeout=self.timeout, api_path="/v3/", session=self.session,
        )  # fmt: skip

    def close(self) -> None:
        self.session.close()

    def _call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST to the first client URL that answers; RegistryError if none does.
        Under etcd's authentication a token is asked for first, and again once
        etcd says the one held is no longer good (simple tokens expire)."""
        errors = []
        for client in self.clients:
            for attempt in range(2):
                try:
                    if self.credentials and "Authorization" not in self.session.headers:
                        self._authenticate(client)
                    answer: dict[str, Any] = client.post(client.get_url(path), json=payload)
                    return answer
                except etcd_errors.Etcd3Exception as e:
                    reason = _reason(e)
                    if self.credentials and "token" in reason and attempt == 0:
                        self.session.headers.pop("Authorization", None)
                        continue
                    errors.append(f"{client.base_url}: {reason}")
                except (requests.RequestException, ValueError) as e:
                    errors.append(f"{client.base_url}: {type(e).__name__}")
                break
        raise RegistryError("no registry answered: " + "; ".join(errors))

    def _authenticate(self, client: etcd3gw.Etcd3Client) -> None:
        answer = client.post(client.get_url("/auth/authenticate"), json=self.credentials)
        self.session.headers["Authorization"] = answer["token"]

    def snapshot(self, prefix: str) -> tuple[int, list[tuple[str, bytes]]]:
        """Every key and value under prefix, and the revision they are as of."""
        answer = self._call("/kv/range", {"key": _b64(prefix), "range_end": _range_end(prefix)})
        kvs = [
            (base64.b64decode(kv["key"]).decode(errors="replace"),
             base64.b64decode(kv.get("value", "")))
            for kv in answer.get("kvs", [])
        ]  # fmt: skip
        return int(answer["header"]["revision"]), kvs

    def put(self, key: str, value: bytes, lease: int | None = None) -> None:
        payload: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease is not None:
            payload["lease"] = lease
        self._call("/kv/put", payload)

    def delete(self, key: str) -> None:
        self._call("/kv/deleterange", {"key": _b64(key)})

    def grant(self, ttl: int) -> int:
        """A new lease, alive for ttl seconds unless kept alive."""
        return int(self._call("/lease/grant", {"TTL": ttl})["ID"])

    def keep_alive(self, lease: int) -> bool:
        """Renew a lease; False if it is gone (expired, or etcd forgot it)."""
        answer = self._call("/lease/keepalive", {"ID": lease})
        return int(answer.get("result", {}).get("TTL", 0)) > 0

    def revoke_lease(self, lease: int) -> None:
        self._call("/kv/lease/revoke", {"ID": lease})

    def watch(self, prefix: str, start_revision: int) -> "Watch":
        """The changes under prefix from start_revision on, as they happen."""
        errors = []
        for client in self.clients:
            request = {
                "create_request": {
                    "key": _b64(prefix),
                    "range_end": _range_end(prefix),
                    "start_revision": start_revision,
                }
            }
            try:
                if self.credentials and "Authorization" not in self.session.headers:
                    self._authenticate(client)
                response = self.session.post(
                    client.get_url("/watch"), json=request, stream=True,
                    timeout=(self.timeout, None),
                )  # fmt: skip
            except requests.RequestException as e:
                errors.append(f"{client.base_url}: {type(e).__name__}")
                continue
            except etcd_errors.Etcd3Exception as e:
                errors.append(f"{client.base_url}: {_reason(e)}")
                continue
            if response.status_code == 200:
                return Watch(response, client.base_url)
            errors.append(f"{client.base_url}: HTTP {response.status_code}")
            response.close()
            self.session.headers.pop("Authorization", None)  # asked for anew next time
        raise RegistryError("no registry answered: " + "; ".join(errors))


class Watch:
    """An open watch stream, read by one thread; close() from another ends its
    events(). It shuts the connection down rather than closing the response:
    closing waits for the reader's lock, which a blocked read holds."""

    def __init__(self, response: requests.Response, url: str) -> None:
        self.response = response
        self.url = url

    def events(self) -> Iterator[Event]:
        """Events until the stream ends, which raises RegistryError (Compacted if
        etcd no longer has the revision asked for)."""
        try:
            for message in self._messages():
                answer = json.loads(message)
                if "error" in answer:  # an expired token, a permission refused
                    raise RegistryError(f"{self.url}: {str(answer['error'])[:120]}")
                result = answer.get("result", {})
                if int(result.get("compact_revision", 0)):
                    raise Compacted(f"{self.url}: revision compacted away")
                if result.get("canceled"):
                    raise RegistryError(f"{self.url}: watch canceled")
                for event in result.get("events", []):
                    kv = event["kv"]
                    key = base64.b64decode(kv["key"]).decode(errors="replace")
                    value = None
                    if event.get("type", "PUT") == "PUT":
                        value = base64.b64decode(kv.get("value", ""))
                    yield Event(key, value, int(kv["mod_revision"]))
        except (requests.RequestException, ValueError, KeyError, AttributeError) as e:
            raise RegistryError(f"{self.url}: watch ended: {type(e).__name__}") from None
        finally:
            self.response.close()
        raise RegistryError(f"{self.url}: watch ended")

    def _messages(self) -> Iterator[bytes]:
        """The stream's JSON messages as they come. Read as the data arrives
        (chunk_size=None): a fixed size would wait for that many bytes, holding
        an event back until more follow. A message whose newline has not come
        yet counts once it parses whole."""
        pending = b""
        for chunk in self.response.iter_content(chunk_size=None):
            *lines, pending = (pending + chunk).split(b"\n")
            if pending.strip():
                with contextlib.suppress(ValueError):
                    json.loads(pending)
                    lines, pending = [*lines, pending], b""
            yield from (line for line in lines if line.strip())

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fd = self.response.raw.fileno()
            with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as connection:
                connection.shutdown(socket.SHUT_RDWR)


def _reason(e: etcd_errors.Etcd3Exception) -> str:
    """etcd's own words for a refusal: the message of its JSON answer, if any."""
    detail = (getattr(e, "detail_text", None) or str(e)).strip()
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        detail = str(json.loads(detail).get("message") or detail)
    return detail.splitlines()[0][:120] if detail else type(e).__name__

"""Whether the Hugging Face hub can be reached, decided once, before anything asks it for files.

Without this, a machine with no network spends ~25 s in huggingface_hub's retries (six warning lines)
before the real error. `HF_HUB_OFFLINE=1` is honoured as the user's word; otherwise one TCP connection
to the endpoint, with a short timeout, tells a reachable hub from an unreachable one, and callers then
read only the local cache or fail in one line.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from sift_cli.errors import SiftError

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_SECONDS = 3.0
TRUE = ("1", "true", "yes", "on")


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def offline_requested() -> bool:
    """HF_HUB_OFFLINE set by the user: use cached files only, and say so when something is missing."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE


@functools.lru_cache(maxsize=None)
def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=PROBE_SECONDS):
            return True
    except OSError:
        return False


def hub_reachable() -> bool:
    """One probe of the endpoint per process (and per HF_ENDPOINT)."""
    return _reachable(endpoint())


def local_only() -> bool:
    """Read only the local cache: the user asked for it, or the hub cannot be reached."""
    return offline_requested() or not hub_reachable()


def unreachable_hint() -> str:
    """Why a hub download cannot happen, for the end of a one-line error."""
    if offline_requested():
        return "HF_HUB_OFFLINE=1 is set, so only cached files are used"
    return f"{endpoint()} cannot be reached and the files are not in the local cache; go online or set HF_HUB_OFFLINE=1 to use cached files"


def require_hub(what: str) -> None:
    """Fail in one line, before any download is tried, when `what` needs the hub and it cannot be reached.
    With HF_HUB_OFFLINE=1 the caller goes on: the libraries then read their cache and fail fast."""
    if not offline_requested() and not hub_reachable():
        raise SiftError(
            f"{what} needs the Hugging Face hub, but {endpoint()} cannot be reached; go online, pass a local file, "
            "or set HF_HUB_OFFLINE=1 to use cached copies"
        )

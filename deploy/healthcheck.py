"""Container HEALTHCHECK: exit 0 iff this container's call-ledger answers 200 on /healthz.

Standard library only, because the slim base image has no curl or wget. /healthz (liveness), not
/readyz: a Redis outage makes /readyz 503 by design, and the process must not be reported dead for
it. Kubernetes ignores HEALTHCHECK and uses the manifests' probes; this one serves `docker run`
and compose.
"""

import os
import sys
import urllib.error
import urllib.request

# LEDGER_HOST is where the server binds; a wildcard bind is reached on loopback.
_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}


def url() -> str:
    host = os.environ.get("LEDGER_HOST", "127.0.0.1").strip()
    host = _LOOPBACK.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{host}:{os.environ.get('LEDGER_PORT', '8080').strip()}/healthz"


def main() -> int:
    try:
        with urllib.request.urlopen(url(), timeout=2) as response:
            return 0 if response.status == 200 else 1
    except (OSError, ValueError):  # refused, timed out, HTTPError (non-2xx), bad port
        return 1


if __name__ == "__main__":
    sys.exit(main())

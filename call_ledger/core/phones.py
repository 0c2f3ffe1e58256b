"""Phone numbers as the read API returns them: E.164 whatever the provider sent."""

import re

_DIGITS = re.compile(r"^\+?\d{3,15}$")
_SEPARATORS = re.compile(r"[\s().-]")


def to_e164(raw: str | None) -> str | None:
    """`447700900000` / `+1 (555) 123-4567` → `+447700900000` / `+15551234567`.

    `sip:` and `client:` addresses, and anything that is not a phone number
    (`anonymous`, a caller id withheld), are returned as given.
    """
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        return None
    if value[0] == "+" and value[1:].isdecimal() and 3 <= len(value) - 1 <= 15:
        return value  # already E.164 (what most providers send): what the rules below return for it
    if value.lower().startswith(("sip:", "sips:", "client:")):
        return value
    compact = _SEPARATORS.sub("", value)
    if compact.startswith("00") and compact[2:].isdigit():
        compact = "+" + compact[2:]
    if _DIGITS.match(compact):
        return compact if compact.startswith("+") else "+" + compact
    return value

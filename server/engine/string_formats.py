"""The JSON Schema `format`s of strings that structured outputs enforce, each as a pattern.

These are the formats OpenAI's strict structured outputs support (and those pydantic writes
for `datetime`, `date`, `time`, `timedelta`, `UUID`, `EmailStr`, `IPv4Address`,
`IPv6Address`). Each pattern allows a subset of its format's valid strings, so whatever the
model writes parses (`datetime.fromisoformat`, `uuid.UUID`, `ipaddress`, pydantic): times
carry their UTC offset as RFC 3339 asks, in upper case. Other formats stay annotations, as
JSON Schema has them by default.
"""

from __future__ import annotations

# years 0001-9999, each month's days, and February 29 in leap years only
_YEAR = "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (
    "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_DATE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_TIME = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,6})?"
_OFFSET = "(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
# ISO 8601 durations with at least one part, and a time part after any T; numbers of up to 6
# digits (timedelta's range holds any such duration)
_N = "[0-9]{1,6}"
_SECONDS = f"{_N}(?:\\.[0-9]{{1,6}})?S"
_HOURS_ON = f"(?:{_N}H(?:{_N}M)?(?:{_SECONDS})?|{_N}M(?:{_SECONDS})?|{_SECONDS})"
_DAYS_ON = f"(?:{_N}Y(?:{_N}M)?(?:{_N}D)?|{_N}M(?:{_N}D)?|{_N}D)"
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = f"{_LABEL}(?:\\.{_LABEL})*"
_LOCAL = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_HEX4 = "[0-9a-fA-F]{1,4}"
# the eight groups written out, or a `::` standing for one or more groups of zeros
_IPV6 = "|".join([
    f"(?:{_HEX4}:){{7}}{_HEX4}",
    f"(?:{_HEX4}:){{1,7}}:",
    f"(?:{_HEX4}:){{1,6}}:{_HEX4}",
    f"(?:{_HEX4}:){{1,5}}(?::{_HEX4}){{1,2}}",
    f"(?:{_HEX4}:){{1,4}}(?::{_HEX4}){{1,3}}",
    f"(?:{_HEX4}:){{1,3}}(?::{_HEX4}){{1,4}}",
    f"(?:{_HEX4}:){{1,2}}(?::{_HEX4}){{1,5}}",
    f"{_HEX4}:(?::{_HEX4}){{1,6}}",
    f":(?:(?::{_HEX4}){{1,7}}|:)",
])  # fmt: skip

FORMAT_PATTERNS: dict[str, str] = {
    "date-time": f"^{_DATE}T{_TIME}{_OFFSET}$",
    "date": f"^{_DATE}$",
    "time": f"^{_TIME}{_OFFSET}$",
    "duration": f"^P(?:{_DAYS_ON}(?:T{_HOURS_ON})?|T{_HOURS_ON}|{_N}W)$",
    "email": f"^{_LOCAL}@{_LABEL}(?:\\.{_LABEL})+$",
    "hostname": f"^{_HOSTNAME}$",
    "ipv4": f"^(?:{_OCTET}\\.){{3}}{_OCTET}$",
    "ipv6": f"^(?:{_IPV6})$",
    "uuid": "^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$",
}

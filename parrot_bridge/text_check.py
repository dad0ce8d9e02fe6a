"""Text the SDK is given to send: a server reads UTF-8, so a str that has no UTF-8 form (it
holds an unpaired surrogate, as a str decoded with errors="surrogateescape" or a JSON "\\ud800"
escape may) is refused where it is given, naming it. Sent, the server refuses the whole
submission it is in, failing every call sent with it."""

from __future__ import annotations

__all__ = ["check_text"]


def check_text(text: str, what: str) -> None:
    """Raise `ValueError` naming `what` when `text` cannot be sent (no UTF-8 form)."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} holds an unpaired surrogate {text[exc.start]!r} at index {exc.start}: no "
            "character, so it cannot be sent (UTF-8 has no form for it)"
        ) from None

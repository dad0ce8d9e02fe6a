"""A logit bias that makes the tiny random model write short, complete JSON under a schema."""

from __future__ import annotations

from tests.server.http_client import request

# Where several fit, the larger bias wins: a string closes at once ('"' is allowed inside one,
# the others are too), then a value is followed by the next key or the object's end, and the
# object opens without leading whitespace. The tiny model alone never closes a string and
# writes whitespace wherever it may.
_BIASES = {'"': 100, ",": 90, "}": 80, "{": 70}


def short_json_bias(url: str) -> dict[str, int]:
    """The logit bias (token id -> bias) on the server at `url`."""
    bias = {}
    for text, value in _BIASES.items():
        _, tokens = request("POST", url + "/tokenize", {"prompt": text})
        assert len(tokens["tokens"]) == 1, (text, tokens)
        bias[str(tokens["tokens"][0])] = value
    return bias

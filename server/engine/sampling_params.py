"""How tokens are sampled and when generation stops."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from server.engine.grammar import compiled_grammar
from server.engine.json_schema import compile_schema
from server.engine.regex_prefix import compiled_regex
from server.engine.tagged_json_prefix import check_tags

MAX_LOGPROBS = 20  # most likely alternatives per token, as OpenAI's chat API allows
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # a seed is a signed 64-bit integer
# every stop string is looked for after each token: 100,000 of them cost ~150 ms a token, for
# every sequence in the batch; 256 of them 0.2 ms, or 1.2 ms at 4096 characters each (OpenAI
# takes 4, vLLM has no bound)
MAX_STOP_STRINGS, MAX_STOP_CHARS = 256, 4096
# the server adds one of its own to a request's (a tool call's closing tag, the text that follows
# an output in a template), so a request at the cap still runs
SERVER_STOPS = 1
# Below this temperature sampling is greedy: dividing logits by it would overflow float32.
GREEDY_BELOW_TEMPERATURE = 1e-5


def offset_seed(seed: int, offset: int) -> int:
    """`seed + offset`, wrapped into the seed range (sample i of a request uses seed + i)."""
    return (seed + offset - SEED_MIN) % 2**64 + SEED_MIN


@dataclass(slots=True)
class SamplingParams:
    """Sampling settings of one generation.

    temperature 0 (anything below 1e-5) is greedy. top_k -1 or 0 and top_p == 1 switch those
    filters off. Stop strings end generation and are not part of the returned text; stop token
    ids and EOS end it too (EOS is ignored with `ignore_eos`). A seed (a signed 64-bit integer)
    makes a request's samples reproducible on its own, whatever else shares its batches.

    `presence_penalty` and `frequency_penalty` (OpenAI's, in [-2, 2]) lower the logits of
    tokens already generated: by the first once a token has appeared, by the second for each
    time it has (greedy decoding too). `logprobs` asks for every generated token's log
    probability under the model (before penalties and temperature) and for that many most
    likely alternatives (0 to 20; None: none). `logit_bias` (OpenAI's) adds to the logits of
    the token ids it names, -100 to 100 (greedy decoding too). `prompt_logprobs` does the same for the prompt's
    tokens (each given those before it; the first has none), for a plain request (a context
    with nothing computed): it computes its whole prompt, skipping the prefix cache.
    `json_object` (JSON mode): the generated text is one JSON object; tokens that would break
    it are never sampled (see `output_constraint.py`) and generation ends once it closes. With
    `json_schema` too (structured outputs), the object is one the schema allows
    (`json_schema.py` says which schemas can be followed; others raise ValueError here).
    `choices` (vLLM's guided_choice): the generated text is exactly one of these strings.
    `regex` (guided_regex): the generated text matches it whole (`regex_prefix.py` says which
    syntax; other patterns raise ValueError here). `grammar` (guided_grammar): the generated
    text is a sentence of this GBNF grammar, from its rule `root` (`grammar_parser.py` says
    which notation; `grammar.py` which grammars can be followed). `tagged_json`: the generated
    text is one of its keys (tags), then a JSON object that the tag's schema allows (None: any
    object), and ends there: a tool call whose function the model picks, each tag a function's
    name up to its arguments (no tag may start another).
    vLLM's (and transformers') extensions: `min_p` keeps only tokens at least that fraction as
    likely as the likeliest (after temperature, top-k and top-p); `repetition_penalty` divides
    the positive logits (multiplies the negative ones) of every token already in the context,
    prompt included, after the logit bias (as theirs); `min_tokens` forbids EOS and the stop
    token ids until that many tokens are generated, and a stop string counts only where it ends
    in a token after those (as vLLM's). `include_stop_str_in_output` keeps a stop string (and
    a stop token's text) at the end of the text; `skip_special_tokens` False keeps special
    tokens' text (such as `<|im_start|>`) in it. `allowed_token_ids` restricts every sampled
    token to these ids. `bad_words_token_ids` are token sequences never generated: a sequence's
    last token is ruled out wherever the output ends with the tokens before it. Where these
    bans (and min_tokens') leave no token at all, the generation ends on its likeliest stop id.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    json_object: bool = False
    json_schema: dict[str, Any] | None = None
    choices: list[str] | None = None
    regex: str | None = None
    grammar: str | None = None
    tagged_json: dict[str, dict[str, Any] | None] | None = None
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    allowed_token_ids: list[int] | None = None
    bad_words_token_ids: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:  # vLLM's rule: -1 and 0 both switch it off
            raise ValueError(f"top_k must be -1 or 0 (no top-k) or at least 1, got {self.top_k}")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be a signed 64-bit integer, got {self.seed}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        check_stop_strings(self.stop, MAX_STOP_STRINGS + SERVER_STOPS)
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:  # NaN fails this too
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        for token, bias in self.logit_bias.items():
            if not (isinstance(token, int) and token >= 0 and -100.0 <= bias <= 100.0):
                raise ValueError(
                    f"logit_bias maps token ids (>= 0) to biases in [-100, 100], got {token}: {bias}"
                )
        if not 0.0 <= self.min_p <= 1.0:  # NaN fails this too
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}"
            )
        constraints = [self.json_object, self.choices is not None, self.regex is not None,
                       self.grammar is not None, self.tagged_json is not None]  # fmt: skip
        if sum(constraints) > 1:
            raise ValueError("ask for one of json_object, choices, regex, grammar and tagged_json")
        if self.regex is not None:
            compiled_regex(self.regex)  # RegexError (a ValueError) says what is not supported
        if self.grammar is not None:
            compiled_grammar(self.grammar)  # GrammarError (a ValueError) says what is wrong
        if self.min_tokens and any(constraints):
            raise ValueError("min_tokens does not go with constrained output (it ends by itself)")
        if self.json_schema is not None:
            if not self.json_object:
                raise ValueError("json_schema needs json_object")
            compile_schema(self.json_schema)  # SchemaError (a ValueError) names what is wrong
        if self.tagged_json is not None:
            check_tags(self.tagged_json)  # a ValueError says what cannot be followed
        if self.choices is not None and not (self.choices and all(self.choices)):
            raise ValueError("choices must be non-empty strings")
        if any(constraints) and self.ignore_eos:
            raise ValueError("constrained output ends when it is complete: no ignore_eos")
        if self.allowed_token_ids is not None and not (
            self.allowed_token_ids and all(t >= 0 for t in self.allowed_token_ids)
        ):
            raise ValueError("allowed_token_ids must be a non-empty list of token ids (>= 0)")
        if any(not ids or min(ids) < 0 for ids in self.bad_words_token_ids):
            raise ValueError("bad_words_token_ids must be non-empty lists of token ids (>= 0)")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                raise ValueError(f"{name} must be in [0, {MAX_LOGPROBS}], got {value}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def adjusts_logits(self) -> bool:
        """Penalties, a logit bias, min_tokens, allowed ids or bad words change the logits
        before sampling."""
        return (
            self.penalized
            or bool(self.logit_bias)
            or self.repetition_penalty != 1.0
            or self.min_tokens > 0
            or self.allowed_token_ids is not None
            or bool(self.bad_words_token_ids)
        )


def check_stop_strings(stop: list[str], most: int = MAX_STOP_STRINGS) -> None:
    """ValueError past `most` strings, or for one longer than MAX_STOP_CHARS."""
    if len(stop) > most:
        raise ValueError(f"at most {most} stop strings are taken, got {len(stop)}")
    long = next((s for s in stop if len(s) > MAX_STOP_CHARS), None)
    if long is not None:
        raise ValueError(
            f"a stop string is at most {MAX_STOP_CHARS} characters, got one of {len(long)}"
        )

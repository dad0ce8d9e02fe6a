"""The tokenizer wrapper against transformers' tokenizer, chat templates, and the incremental
detokenizer on random text (non-ASCII included) and random token ids."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

from server.engine.tokenizer import IncrementalDetokenizer, Tokenizer
from tests.tiny_models import CHATML_TEMPLATE, VOCAB_SIZE, training_text

ALPHABET = (
    "abcdefghijklmnopqrstuvwxyz ABCXYZ 0123456789 .,;:!?'\"()-\n\t"
    "éèüöäßçñåø ΑλφαβητΩ Приветмир 日本語中文字 한국어 🦜🎉✨👍🏽 ½€£¥→∑∞ \u200b"
)


def random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        if rng.random() < 0.5:  # words that merge well
            words = training_text().split()
            texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))))
        else:
            texts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 60))))
    return texts


def stream(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    deltas = [detok.add(t) for t in ids]
    deltas.append(detok.finish())
    return deltas


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_llama_path: Path) -> Tokenizer:
    return Tokenizer.from_folder(tiny_llama_path)


def test_matches_transformers(tiny_llama_path: Path, tiny_tokenizer: Tokenizer) -> None:
    hf = AutoTokenizer.from_pretrained(str(tiny_llama_path))
    assert tiny_tokenizer.vocab_size == VOCAB_SIZE == len(hf)
    for text in random_texts(50, seed=1) + ["<|im_start|>user\nhi<|im_end|>"]:
        ids = tiny_tokenizer.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False)
        for skip in (True, False):
            assert tiny_tokenizer.decode(ids, skip_special_tokens=skip) == hf.decode(
                ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False
            )
    assert tiny_tokenizer.eos_token_ids == {hf.eos_token_id}
    assert tiny_tokenizer.decode(tiny_tokenizer.encode("<|im_end|>x")) == "x"


def test_chat_template_matches_transformers(tiny_llama_path: Path, tiny_tokenizer: Tokenizer) -> None:
    hf = AutoTokenizer.from_pretrained(str(tiny_llama_path))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Grüße! What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    for gen in (True, False):
        ours = tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=gen)
        assert ours == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    assert ours.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_template_dialect_features(tiny_llama_path: Path) -> None:
    """What HF templates rely on (tojson, raise_exception, loop controls, generation blocks,
    trimmed blocks) renders as transformers renders it."""
    template = (
        "{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('bad role') }}"
        "{% endif %}{% if m.role == 'skip' %}{% continue %}{% endif %}"
        "{% generation %}{{ m.content | tojson }}{% endgeneration %}\n"
        "  {% if loop.last %}{{ m | tojson(indent=1) }}{% endif %}\n{% endfor %}{{ eos_token }}"
    )
    hf = AutoTokenizer.from_pretrained(str(tiny_llama_path))
    tok = Tokenizer(tokenizers.Tokenizer(models.BPE()), chat_template=template,
                    special_tokens={"eos_token": "</s>"})
    messages = [{"role": "user", "content": "é \"q\""}, {"role": "skip", "content": "x"}]
    expected = hf.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    ).replace(hf.eos_token, "</s>")
    assert tok.apply_chat_template(messages) == expected
    assert '"é \\"q\\""' in expected
    with pytest.raises(Exception, match="bad role"):
        tok.apply_chat_template([{"role": "bad", "content": ""}])


def test_a_developer_message_is_a_system_one_unless_the_template_knows_the_role(
    tiny_tokenizer: Tokenizer,
) -> None:
    """OpenAI's `developer` role (what its newer clients send for instructions) was rendered as
    a turn of an unknown role (`<|im_start|>developer`) after the template's default system
    prompt; the Responses API already read it as system."""
    as_developer = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    as_system = [{**as_developer[0], "role": "system"}, as_developer[1]]
    assert tiny_tokenizer.apply_chat_template(as_developer) == (
        tiny_tokenizer.apply_chat_template(as_system)
    )
    knowing = Tokenizer(
        tiny_tokenizer.backend,
        chat_template="{% for m in messages %}{% if m.role == 'developer' %}[dev]"
        "{% else %}[{{ m.role }}]{% endif %}{{ m.content }}{% endfor %}",
    )
    assert knowing.apply_chat_template(as_developer) == "[dev]Be brief.[user]Hi"
    assert knowing.apply_chat_template(as_system) == "[system]Be brief.[user]Hi"


def test_chat_template_errors(tiny_tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        tiny_tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"content": "b"}])
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer(tiny_tokenizer.backend).apply_chat_template([{"role": "user", "content": "a"}])
    assert tiny_tokenizer.chat_template == CHATML_TEMPLATE


def test_incremental_detokenization_of_random_texts(tiny_tokenizer: Tokenizer) -> None:
    split_characters = 0
    for text in random_texts(200, seed=2):
        ids = tiny_tokenizer.encode(text)
        detok = tiny_tokenizer.detokenizer()
        deltas = stream(detok, ids)
        assert "".join(deltas) == detok.text == text == tiny_tokenizer.decode(ids)
        assert not any("\ufffd" in d for d in deltas)  # nothing half-decoded is ever released
        split_characters += deltas[:-1].count("")
    assert split_characters > 0  # some characters spanned several tokens


def test_incremental_detokenization_of_random_ids(tiny_tokenizer: Tokenizer) -> None:
    """Arbitrary ids (invalid UTF-8, special tokens): the stream still equals the full decode."""
    rng = random.Random(3)
    for skip in (True, False):
        for _ in range(100):
            ids = [rng.randrange(VOCAB_SIZE) for _ in range(rng.randint(1, 40))]
            detok = tiny_tokenizer.detokenizer(skip_special_tokens=skip)
            text = "".join(stream(detok, ids))
            assert text == tiny_tokenizer.decode(ids, skip_special_tokens=skip)


def test_stray_bytes_stream_at_once_and_a_split_character_waits_for_its_end(
    tiny_tokenizer: Tokenizer,
) -> None:
    """Byte-level BPE: a byte that cannot be part of a character (a continuation byte with no
    lead byte, 0xFF) is its U+FFFD at once, as the full decode has it; held, the window grew
    with each one and every step decoded all of it again (4,000 of them took 3 s, and nothing
    streamed until the end). A character split across tokens still waits for its last byte."""
    assert tiny_tokenizer.byte_level
    byte = {tiny_tokenizer.token_bytes(t)[0]: t for t in range(tiny_tokenizer.vocab_size)
            if len(tiny_tokenizer.token_bytes(t)) == 1}  # fmt: skip
    detok = tiny_tokenizer.detokenizer()
    assert [detok.add(byte[b]) for b in (0x80, 0xBF, 0xFF, 0x80)] == ["\ufffd"] * 4
    assert [detok.add(byte[b]) for b in (0xE2, 0x82, 0xAC)] == ["", "", "€"]
    assert [detok.add(byte[b]) for b in (0xE2, 0x41)] == ["", "\ufffdA"]  # broken by "A"
    assert [detok.add(byte[b]) for b in (0xF0, 0x9F)] == ["", ""] and detok.finish() == "\ufffd"
    # random runs of such bytes, characters, their pieces and other tokens: the full decode
    rng = random.Random(7)
    pieces = [[0x80], [0xFF], [0xE2, 0x82, 0xAC], [0xC3, 0xA9], [0xF0, 0x9F, 0xA6, 0x9C],
              [0xE2], [0xE2, 0x82], [0xF0, 0x9F, 0xA6], [0x41], [0xED, 0xA0, 0x80]]  # fmt: skip
    others = tiny_tokenizer.encode("héllo 🦜 wörld<|im_end|>")
    for _ in range(400):
        ids = []
        for _ in range(rng.randint(1, 15)):
            ids += [rng.choice(others)] if rng.random() < 0.2 else [
                byte[b] for b in rng.choice(pieces)
            ]
        for skip in (True, False):
            detok = tiny_tokenizer.detokenizer(skip_special_tokens=skip)
            assert "".join(stream(detok, ids)) == tiny_tokenizer.decode(ids, skip), ids


def test_token_bytes_spell_the_text(tiny_tokenizer: Tokenizer) -> None:
    """Each token's bytes, joined, are the text's UTF-8, also where a token holds part of a
    character (what OpenAI's logprobs report as `bytes`)."""
    partial = 0
    for text in random_texts(200, seed=6):
        pieces = [tiny_tokenizer.token_bytes(t) for t in tiny_tokenizer.encode(text)]
        assert b"".join(pieces) == text.encode()
        partial += sum(1 for piece in pieces if _not_utf8(piece))
    assert partial > 0


def test_token_bytes_of_special_and_byte_fallback_tokens() -> None:
    """Special tokens spell their own text; sentencepiece's <0xNN> pieces are one byte."""
    backend = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback()])
    backend.add_tokens(["<0xE2>"])
    backend.add_special_tokens(["<|end|>"])
    tok = Tokenizer(backend)
    assert tok.token_bytes(tok.token_id("<0xE2>")) == b"\xe2"
    assert tok.token_bytes(tok.token_id("<|end|>")) == b"<|end|>"


def _not_utf8(piece: bytes) -> bool:
    try:
        piece.decode()
    except UnicodeDecodeError:
        return True
    return False


def test_incremental_detokenization_with_leading_space_merging() -> None:
    """A sentencepiece-style (Metaspace) tokenizer drops the space of the first token when
    decoding, so naive per-token decoding loses spaces; the windowed decode must not."""
    backend = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    texts = random_texts(100, seed=4)
    backend.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>"], show_progress=False)
    )
    tok = Tokenizer(backend)
    assert tok.decode(tok.encode(" b")) == "b"  # the leading space really is dropped
    for text in texts:
        ids = tok.encode(text)
        detok = tok.detokenizer()
        assert "".join(stream(detok, ids)) == tok.decode(ids)


@pytest.mark.slow
def test_smollm2_tokenizer(smollm2_path: Path) -> None:
    tok = Tokenizer.from_folder(smollm2_path)
    hf = AutoTokenizer.from_pretrained(str(smollm2_path))
    messages = [{"role": "user", "content": "Résumé in 日本語?"}]
    assert tok.apply_chat_template(messages) == hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert tok.eos_token_ids == {hf.eos_token_id}
    for text in random_texts(40, seed=5):
        ids = tok.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False)
        assert "".join(stream(tok.detokenizer(), ids)) == text
        assert b"".join(tok.token_bytes(t) for t in ids) == text.encode()


def test_prompts_start_with_the_bos_that_transformers_adds(
    tiny_bos_llama_path: Path, tiny_llama_path: Path, tiny_tokenizer: Tokenizer
) -> None:
    hf = AutoTokenizer.from_pretrained(str(tiny_bos_llama_path))
    tokenizer = Tokenizer.from_folder(tiny_bos_llama_path)
    assert tokenizer.prompt_prefix_ids == (hf.bos_token_id,)
    for text in random_texts(30, seed=7) + [""]:
        assert tokenizer.encode_prompt(text) == hf(text).input_ids
        assert tokenizer.encode_prompt(text, add_special_tokens=False) == tokenizer.encode(text)
        # a text that writes its BOS (a chat template's) keeps that one, not two
        assert tokenizer.encode_prompt("<s>" + text) == hf(text).input_ids
    # ChatML tokenizers put nothing before a text
    assert tiny_tokenizer.prompt_prefix_ids == ()
    assert tiny_tokenizer.encode_prompt("a prompt") == tiny_tokenizer.encode("a prompt")


def test_fewest_tokens_never_exceeds_the_count(tiny_tokenizer: Tokenizer) -> None:
    texts = random_texts(200, seed=5) + [" " * 5000, "word " * 3000, "\n" * 999, "🦜" * 700]
    for text in texts:
        assert tiny_tokenizer.fewest_tokens(text) <= len(tiny_tokenizer.encode(text)), text
    # far past any context: a bound that tells (a 1 MB text is ~1/13 of a token per byte here)
    assert tiny_tokenizer.fewest_tokens("x" * 1_000_000) > 50_000


def test_a_tokenizer_that_may_drop_or_shrink_text_bounds_less_or_not_at_all() -> None:
    from tokenizers import normalizers

    vocab = {"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "abc": 5}

    def tokenizer(normalizer: object = None, pre: object = None, fuse: bool = False) -> Tokenizer:
        merges = [("a", "b"), ("ab", "c")]
        model = models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=fuse)
        backend = tokenizers.Tokenizer(model)
        if normalizer is not None:
            backend.normalizer = normalizer
        if pre is not None:
            backend.pre_tokenizer = pre
        return Tokenizer(backend)

    assert tokenizer().fewest_tokens("a" * 400) == 80  # "<unk>" at most: 5 bytes
    # NFKC: "𝐀" (4 bytes) is "A", so a token may stand for 4 times its bytes
    assert tokenizer(normalizers.NFKC()).fewest_tokens("a" * 400) == 20
    # unknown characters fused: one token for any run of them
    assert len(tokenizer(fuse=True).encode("é" * 1000)) == 1
    assert tokenizer(fuse=True).fewest_tokens("é" * 1000) == 0
    assert tokenizer().fewest_tokens("é" * 1000) == 400
    # whitespace is dropped: 1 MB of blanks may be no token at all
    assert tokenizer(pre=pre_tokenizers.Whitespace()).fewest_tokens(" " * 10**6) == 0
    assert tokenizer(normalizers.Strip()).fewest_tokens(" " * 10**6) == 0

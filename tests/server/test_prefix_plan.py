"""Planning forks of calls that share a leading run of tokens (pure)."""

import pytest

from server.prefix_plan import PrefixGroup, plan_shared_prefixes


def test_calls_reading_one_document_form_one_group() -> None:
    doc = list(range(100, 150))
    prompts = [[1, *doc, 7, q] for q in range(8)] + [[2, 3, 4]]
    groups = plan_shared_prefixes(prompts, min_tokens=8)
    assert groups == [PrefixGroup(tuple(range(8)), 52)]


def test_each_member_keeps_a_token_of_its_own() -> None:
    groups = plan_shared_prefixes([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4, 5]], min_tokens=2)
    assert groups == [PrefixGroup((0, 1, 2), 3)]


def test_short_common_prefixes_are_not_shared() -> None:
    assert plan_shared_prefixes([[1, 2, 3, 9], [1, 2, 3, 8]], min_tokens=4) == []


def test_one_far_prompt_does_not_shrink_a_long_shared_prefix() -> None:
    long = list(range(40))
    prompts = [[*long, 1], [*long, 2], [*long[:10], 99, 98]]
    assert plan_shared_prefixes(prompts, min_tokens=4) == [PrefixGroup((0, 1), 40)]


def test_separate_documents_form_separate_groups() -> None:
    a, b = [5] * 20, [6] * 20
    prompts = [[*a, 1], [*b, 1], [*a, 2], [*b, 2]]
    assert plan_shared_prefixes(prompts, min_tokens=4) == [
        PrefixGroup((0, 2), 20),
        PrefixGroup((1, 3), 20),
    ]


def test_min_tokens_must_be_positive() -> None:
    with pytest.raises(ValueError, match="min_tokens"):
        plan_shared_prefixes([], 0)

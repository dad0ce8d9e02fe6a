import pytest
import torch

from server.kernels import CascadeConfig, SharedPrefix, build_attention_metadata
from server.kernels.cascade_config import CPU_RULE, CUDA_RULE
from server.kernels.prefix_groups import plan_shared_prefixes

ANY = CascadeConfig(min_prefix_tokens=1, min_group_size=2)


def test_forks_of_one_context_form_one_level():
    tables = [[0, 1, 2, 10], [0, 1, 2, 11], [0, 1, 2, 12]]
    levels = plan_shared_prefixes(tables, [4, 4, 4], 16, ANY)
    assert levels == [SharedPrefix((0, 1, 2), 0, 48)]


def test_nested_subgroup_gets_its_own_level_after_the_parent():
    # 6 sequences share blocks 0-3; sequences 1, 2 and 4 also share 20-21 (a fork of a fork).
    common = [0, 1, 2, 3]
    tables = [
        common + [30, 31, 32],
        common + [20, 21, 40],
        common + [20, 21, 41],
        common + [33, 34],
        common + [20, 21, 42],
        common + [35],
    ]
    levels = plan_shared_prefixes(tables, [len(t) for t in tables], 4, ANY)
    assert levels == [
        SharedPrefix((0, 1, 2, 3, 4, 5), 0, 16),
        SharedPrefix((1, 2, 4), 16, 24),
    ]


def test_several_groups_in_one_batch():
    tables = [[0, 1, 9], [5, 6, 7, 8], [0, 1, 10], [5, 6, 7, 11], [12]]
    levels = plan_shared_prefixes(tables, [3, 4, 3, 4, 1], 16, ANY)
    assert sorted(levels, key=lambda p: p.seqs) == [
        SharedPrefix((0, 2), 0, 32),
        SharedPrefix((1, 3), 0, 48),
    ]


def test_cost_rule_drops_small_groups_and_short_prefixes():
    tables = [[0, 1, 2, 3, 9], [0, 1, 2, 3, 10], [0, 1, 2, 3, 11]]
    shareable = [5, 5, 5]
    assert plan_shared_prefixes(tables, shareable, 16, CascadeConfig(64, 3)) == [
        SharedPrefix((0, 1, 2), 0, 64)
    ]
    assert plan_shared_prefixes(tables, shareable, 16, CascadeConfig(65, 3)) == []
    assert plan_shared_prefixes(tables, shareable, 16, CascadeConfig(16, 4)) == []


def test_level_too_short_alone_is_handed_down_to_its_subgroup():
    # All three share block 0 only (too short); two of them share blocks 0-4 (long enough).
    tables = [[0, 1, 2, 3, 4, 7], [0, 1, 2, 3, 4, 8], [0, 5, 6]]
    levels = plan_shared_prefixes(tables, [6, 6, 3], 16, CascadeConfig(64, 2))
    assert levels == [SharedPrefix((0, 1), 0, 80)]


def test_only_shareable_blocks_join_a_level():
    tables = [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert plan_shared_prefixes(tables, [2, 3], 16, ANY) == [SharedPrefix((0, 1), 0, 32)]
    assert plan_shared_prefixes(tables, [0, 3], 16, ANY) == []


def test_long_tables_diverging_deep_inside():
    shared = list(range(500))
    tables = [shared + [1000 + i] for i in range(4)]
    tables[3][321] = 9999
    levels = plan_shared_prefixes(tables, [len(t) for t in tables], 16, ANY)
    assert levels == [
        SharedPrefix((0, 1, 2, 3), 0, 321 * 16),
        SharedPrefix((0, 1, 2), 321 * 16, 500 * 16),
    ]


def test_metadata_plans_levels_among_decodes_only():
    # Sequence 1 is a prefill chunk over the same blocks: it takes no part in the level.
    # Block 3 holds each decode's new token for sequence 0 only, so it is not shared.
    meta = build_attention_metadata(
        query_lens=[1, 8, 1, 1],
        seq_lens=[50, 56, 70, 70],
        block_tables=[[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2, 3, 5]],
        block_size=16,
        cascade=True,
        cascade_config=ANY,
    )
    assert meta.shared_prefixes == [SharedPrefix((0, 2, 3), 0, 48), SharedPrefix((2, 3), 48, 64)]
    assert (
        build_attention_metadata(
            [1, 1], [20, 20], [[0, 1], [0, 2]], 16, cascade=False
        ).shared_prefixes
        == []
    )


def test_metadata_rejects_bad_batches():
    with pytest.raises(ValueError, match="sequence 1: block table"):
        build_attention_metadata([1, 1], [4, 40], [[0], [1]], 16)
    with pytest.raises(ValueError, match="query_len"):
        build_attention_metadata([3], [2], [[0]], 16)


def test_cascade_config_checks():
    with pytest.raises(ValueError, match="min_group_size"):
        CascadeConfig(min_group_size=1)
    with pytest.raises(ValueError, match="min_prefix_tokens"):
        CascadeConfig(min_prefix_tokens=0)


def test_saved_reads_weigh_group_size_against_prefix_length():
    rule = CascadeConfig(min_prefix_tokens=16, min_group_size=2, min_saved_tokens=64)
    three = [[0, 1, 5], [0, 1, 6], [0, 1, 7]]
    assert plan_shared_prefixes(three, [3, 3, 3], 16, rule) == [SharedPrefix((0, 1, 2), 0, 32)]
    assert plan_shared_prefixes(three[:2], [3, 3], 16, rule) == []  # saves only 32 reads
    assert rule.pays(3, 32) and not rule.pays(2, 32) and not rule.pays(9, 8)


def test_each_device_kind_has_its_measured_rule():
    assert CascadeConfig.for_device("cpu") == CPU_RULE
    assert CascadeConfig.for_device(torch.device("cuda")) == CUDA_RULE
    assert CUDA_RULE.pays(64, 2048) and not CUDA_RULE.pays(16, 512)
    meta = build_attention_metadata(
        [1, 1], [300, 300], [list(range(19)), list(range(18)) + [40]], 16
    )
    assert meta.shared_prefixes == ([SharedPrefix((0, 1), 0, 288)] if CPU_RULE.pays(2, 288) else [])

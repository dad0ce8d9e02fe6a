import pytest
import torch

from server.kernels.merge import merge_attention_outputs, merge_attention_states
from server.kernels.reference import reference_partial


def _split_keys(num_keys: int, cuts: list[int], seed: int):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(3, 8, 64, generator=gen, dtype=torch.float64)
    keys = torch.randn(num_keys, 2, 64, generator=gen, dtype=torch.float64)
    values = torch.randn(num_keys, 2, 64, generator=gen, dtype=torch.float64)
    bounds = [0, *cuts, num_keys]
    parts = [
        reference_partial(q, keys[a:b], values[a:b], 0.125)
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]
    whole = reference_partial(q, keys, values, 0.125)
    return parts, whole


@pytest.mark.parametrize("cuts", [[40], [1, 2], [10, 50, 90], [0], [100], [30, 30]])
def test_merging_parts_equals_attending_all_keys(cuts):
    parts, (out, lse) = _split_keys(100, cuts, seed=len(cuts))
    merged, merged_lse = merge_attention_states(
        torch.stack([o for o, _ in parts]), torch.stack([s for _, s in parts])
    )
    assert torch.allclose(merged, out, rtol=0, atol=1e-12)
    assert torch.allclose(merged_lse, lse, rtol=0, atol=1e-12)


def test_empty_parts_are_ignored_even_when_their_output_is_garbage():
    parts, (out, lse) = _split_keys(50, [50], seed=3)
    (o_full, lse_full), (_, lse_empty) = parts
    assert torch.isinf(lse_empty).all()
    garbage = torch.full_like(o_full, float("nan"))
    merged, merged_lse = merge_attention_states(
        torch.stack([garbage, o_full]), torch.stack([lse_empty, lse_full])
    )
    assert torch.allclose(merged, out, rtol=0, atol=1e-12)
    assert torch.equal(merged_lse, lse)


def test_all_parts_empty_gives_zero_output_and_minus_infinity():
    o = torch.full((2, 4, 3, 8), float("nan"))
    lse = torch.full((2, 4, 3), float("-inf"))
    merged, merged_lse = merge_attention_states(o, lse)
    assert torch.equal(merged, torch.zeros(4, 3, 8))
    assert torch.isinf(merged_lse).all() and (merged_lse < 0).all()


def test_merge_is_stable_for_huge_log_sum_exps():
    # exp(1000) overflows even float64: only a max-subtracted merge gets this right.
    o = torch.randn(2, 5, 16, dtype=torch.float64)
    log3 = torch.log(torch.tensor(3.0, dtype=torch.float64))
    log4 = torch.log(torch.tensor(4.0, dtype=torch.float64))
    lse = torch.stack([torch.full((5,), 1000.0, dtype=torch.float64), 1000.0 + log3.expand(5)])
    merged, merged_lse = merge_attention_states(o, lse)
    assert torch.allclose(merged, 0.25 * o[0] + 0.75 * o[1], rtol=0, atol=1e-12)
    assert torch.allclose(merged_lse, 1000.0 + log4.expand(5), rtol=0, atol=1e-12)


def test_low_precision_outputs_merge_in_float32():
    parts, (out, _) = _split_keys(64, [20], seed=5)
    merged, _ = merge_attention_states(
        torch.stack([o.to(torch.bfloat16) for o, _ in parts]),
        torch.stack([s.to(torch.float32) for _, s in parts]),
    )
    assert merged.dtype == torch.float32
    assert (merged.double() - out).abs().max() / out.abs().max() < 1e-2


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="merge"):
        merge_attention_states(torch.zeros(2, 3, 4, 8), torch.zeros(2, 3, 5))


def test_output_only_merge_agrees_with_the_full_merge():
    parts, (out, _) = _split_keys(80, [0, 33], seed=9)
    outputs = torch.stack([o for o, _ in parts])
    lses = torch.stack([s for _, s in parts])
    assert torch.isinf(lses[0]).all() and torch.equal(outputs[0], torch.zeros_like(outputs[0]))
    merged = merge_attention_outputs(outputs, lses)
    assert torch.allclose(merged, out, rtol=0, atol=1e-12)
    assert torch.equal(merged, merge_attention_states(outputs, lses)[0])

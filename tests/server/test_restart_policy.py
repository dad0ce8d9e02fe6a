"""When a dead engine is restarted, and when the server stops trying."""

import pytest

from server.restart_policy import RestartBudget, RestartPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_restarts_back_off_and_stop_when_the_window_is_full() -> None:
    clock = Clock()
    budget = RestartBudget(RestartPolicy(3, window_s=60, backoff_s=1, max_backoff_s=3), clock)
    assert [budget.next_delay() for _ in range(3)] == [1, 2, 3]  # doubling, capped
    assert budget.next_delay() is None  # spent
    clock.now += 59
    assert budget.next_delay() is None  # the first three are still in the window
    clock.now += 1
    assert budget.next_delay() == 1  # they left it: the backoff starts over


def test_old_restarts_leave_the_window_one_by_one() -> None:
    clock = Clock()
    budget = RestartBudget(RestartPolicy(2, window_s=10, backoff_s=1, max_backoff_s=30), clock)
    assert budget.next_delay() == 1
    clock.now += 6
    assert budget.next_delay() == 2
    assert budget.next_delay() is None
    clock.now += 4  # the first left the window, the second not
    assert budget.next_delay() == 2
    assert budget.next_delay() is None


def test_zero_restarts_means_never() -> None:
    assert RestartBudget(RestartPolicy(max_restarts=0)).next_delay() is None


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"max_restarts": -1}, "max_restarts"),
        ({"window_s": 0}, "window_s"),
        ({"backoff_s": 5, "max_backoff_s": 1}, "backoff_s"),
    ],
)
def test_bad_policies_are_refused(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        RestartPolicy(**kwargs)

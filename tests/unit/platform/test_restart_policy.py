"""The supervisor's restart policy, on an injected clock: backoff doubles to a cap, resets after a stable run, and a
crash loop is given up on with a reason."""

from __future__ import annotations

from orderly.platform.supervisor import GiveUp, Restart, RestartHistory, RestartPolicy


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def run_for(history: RestartHistory, clock: Clock, seconds: float) -> Restart | GiveUp:
    """A process that starts now, runs ``seconds`` and exits; then waits out the backoff it was given."""
    started = clock.now
    decision = history.exited(started_at=started, now=clock.advance(seconds))
    if isinstance(decision, Restart):
        clock.advance(decision.delay)
    return decision


def test_delays_start_at_half_a_second_and_double_up_to_thirty_seconds() -> None:
    history = RestartHistory(RestartPolicy(crash_limit=1000))
    clock = Clock()
    delays = []
    for _ in range(9):
        decision = run_for(history, clock, 10)  # 10 s + the delay apart: never 5 exits in 60 s, never stable
        assert isinstance(decision, Restart)
        delays.append(decision.delay)
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_a_run_that_lasted_thirty_seconds_starts_the_delays_and_the_crash_count_over() -> None:
    history = RestartHistory(RestartPolicy())
    clock = Clock()
    assert [run_for(history, clock, 1) for _ in range(4)] == [Restart(0.5), Restart(1), Restart(2), Restart(4)]
    assert run_for(history, clock, 30) == Restart(0.5)
    assert [run_for(history, clock, 1) for _ in range(4)] == [
        Restart(1),
        Restart(2),
        Restart(4),
        GiveUp("crash loop: exited 5 times within 60 s"),
    ]


def test_the_fifth_exit_within_sixty_seconds_is_a_crash_loop_with_a_reason() -> None:
    history = RestartHistory(RestartPolicy())
    clock = Clock()
    decisions = [run_for(history, clock, 0.2) for _ in range(5)]
    assert all(isinstance(d, Restart) for d in decisions[:4])
    assert decisions[4] == GiveUp("crash loop: exited 5 times within 60 s")


def test_exits_spread_wider_than_the_window_are_not_a_crash_loop() -> None:
    history = RestartHistory(RestartPolicy())
    clock = Clock()
    for _ in range(20):
        decision = history.exited(started_at=clock.now, now=clock.advance(16))  # 4 exits per 64 s at most
        assert isinstance(decision, Restart)

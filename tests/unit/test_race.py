"""core/adapt.py: the race between shm and the ring, as bookkeeping with made-up timings
(no clock): which candidate each call runs, which calls count, what wins, when it reruns."""
import pytest

from ringreduce.core import adapt
from ringreduce.core.adapt import (CLOSE, DRIFT, RETRY_CALLS, ROUNDS, SAMPLES, WARMUP,
                                   WATCH_CALLS, Race)

RACE_CALLS = (WARMUP + SAMPLES) * len(adapt.CANDIDATES)


def run_race(race, seconds_of, nbytes=1 << 20, calls=RACE_CALLS):
    """Feed one round of a race (the first, with its warm-up, unless ``calls`` says
    otherwise); ``seconds_of(name, call)`` is what the call took. Returns the candidates
    run, in order, and whether each call said to agree."""
    ran, agree = [], []
    for call in range(calls):
        i = race.next()
        name = race.candidates[i]
        ran.append(name)
        agree.append(race.record(i, seconds_of(name, call), nbytes))
    return ran, agree


def test_candidates_alternate_and_only_the_last_call_asks_to_agree():
    race = Race()
    ran, agree = run_race(race, lambda name, call: 1.0)
    assert ran == list(adapt.CANDIDATES) * (WARMUP + SAMPLES)
    assert agree == [False] * (RACE_CALLS - 1) + [True]
    assert [len(s) for s in race.samples] == [SAMPLES, SAMPLES]


def test_warmup_calls_are_not_counted():
    # The first call of each candidate takes 1000 s (a window growing): not in the medians.
    race = Race()
    run_race(race, lambda name, call: 1000.0 if call < len(adapt.CANDIDATES) else 2.0)
    assert race.medians() == [2.0 / (1 << 20)] * 2


def test_medians_are_per_byte_and_robust_to_one_outlier():
    race = Race(("a", "b"))
    times = {"a": iter([9, 3, 3, 3, 50, 3, 3]), "b": iter([9, 1, 1, 1, 1, 1, 70])}
    run_race(race, lambda name, call: float(next(times[name])), nbytes=10)
    assert race.medians() == [0.3, 0.1]


@pytest.mark.parametrize("sums,winner", [([2.0, 1.0], "ring"), ([1.0, 2.0], "shm"),
                                         ([1.0, 1.0 + 1.01 * CLOSE], "shm")])
def test_the_smaller_sum_wins_where_they_are_apart(sums, winner):
    race = Race()
    run_race(race, lambda name, call: 1.0)
    assert race.decide(sums) == winner
    assert all(race.candidates[race.next()] == winner for _ in range(3))


ROUND_CALLS = SAMPLES * len(adapt.CANDIDATES)


def test_a_close_race_goes_on_with_its_samples_pooled():
    # Within CLOSE: no winner yet; the next round alternates again, without a warm-up,
    # and its samples join the first round's.
    race = Race()
    run_race(race, lambda name, call: 1.0)
    assert race.decide([1.0, 1.0 + 0.9 * CLOSE]) is None
    assert race.winner is None
    times = {"shm": 4.0, "ring": 1.0}
    ran, agree = run_race(race, lambda name, call: times[name], calls=ROUND_CALLS)
    assert ran == list(adapt.CANDIDATES) * SAMPLES
    assert agree == [False] * (ROUND_CALLS - 1) + [True]
    assert [len(s) for s in race.samples] == [2 * SAMPLES] * 2
    # shm: six samples of 1 s and six of 4 s, median 2.5 s; ring 1 s throughout
    assert race.medians() == [2.5 / (1 << 20), 1.0 / (1 << 20)]
    assert race.decide([2.5, 1.0]) == "ring"


def test_after_the_last_round_the_smaller_wins_however_close_the_first_on_a_tie():
    race = Race()
    run_race(race, lambda name, call: 1.0)
    for _ in range(ROUNDS - 1):
        assert race.decide([1.5, 1.5]) is None
        ran, agree = run_race(race, lambda name, call: 1.0, calls=ROUND_CALLS)
        assert agree[-1] and not any(agree[:-1])
    assert race.decide([1.5, 1.5]) == "shm"
    assert adapt.most_calls() == RACE_CALLS + (ROUNDS - 1) * ROUND_CALLS


def test_the_winner_runs_until_the_race_reruns():
    # Every WATCH_CALLS calls the winner's time is checked; as fast as it won, it stays.
    race = Race()
    run_race(race, lambda name, call: 1.0)
    race.decide([3.0, 1.0])
    for call in range(1, RETRY_CALLS + 1):
        assert race.next() == 1
        watch = race.record(1, 1.0, 1 << 20)
        assert watch is (call % WATCH_CALLS == 0 and call < RETRY_CALLS)
        if watch:
            assert race.medians() == [1.0 / (1 << 20)]
            assert race.decide([DRIFT * 1.0]) == "ring"  # at DRIFT, not above: kept
    # a new race: both candidates again, from the warm-up on, with all its rounds
    ran, agree = run_race(race, lambda name, call: 1.0)
    assert ran == list(adapt.CANDIDATES) * (WARMUP + SAMPLES) and agree[-1]
    assert race.rounds == 1 and race.decide([1.0, 1.0]) is None


def test_a_winner_that_slows_down_past_drift_is_raced_again():
    # Won at 1 s per call; then its calls take 3 s (the machine changed, or a larger size of
    # the class runs slower per byte): at the next watch the race starts again, warm-up
    # first, and the other candidate can win.
    race = Race()
    run_race(race, lambda name, call: {"shm": 2.0, "ring": 1.0}[name], nbytes=10)
    assert race.decide(race.medians()) == "ring"  # one rank's figures: 0.2 and 0.1 s per byte
    for call in range(WATCH_CALLS):
        assert race.record(1, 3.0, 10) is (call == WATCH_CALLS - 1)
    assert race.medians() == [0.3]
    assert race.decide([0.3]) is None
    assert race.winner is None and race.calls == 0
    ran, agree = run_race(race, lambda name, call: {"shm": 1.0, "ring": 3.0}[name])
    assert ran == list(adapt.CANDIDATES) * (WARMUP + SAMPLES) and agree[-1]
    assert race.decide([1.0, 3.0]) == "shm"


def test_a_winner_caught_slow_counts_at_its_watch_in_the_next_race():
    # The ring won at 0.1, its watch saw 0.3; the new race's own calls say 0.1 again (calls
    # back to back can run faster than among others): it counts at 0.3, and shm, at 0.2,
    # wins. The floor holds for that race only.
    race = Race()
    run_race(race, lambda name, call: 1.0)
    assert race.decide([0.2, 0.1]) == "ring"
    for _ in range(WATCH_CALLS):
        race.record(1, 3.0, 10)
    assert race.decide([0.3]) is None
    run_race(race, lambda name, call: 1.0)
    assert race.decide([0.2, 0.1]) == "shm"
    for _ in range(RETRY_CALLS):  # as fast as it won: its watches keep it, then a new race
        if race.record(0, 2.0, 10):
            assert race.decide(race.medians()) == "shm"
    run_race(race, lambda name, call: 1.0)
    assert race.decide([0.2, 0.1]) == "ring"


def test_raced_sizes_are_whole_size_classes():
    # Every size of one class is raced or none is: the bounds are powers of two.
    for bound in (adapt.RACE_MIN_BYTES, adapt.RACE_MAX_BYTES):
        assert bound & (bound - 1) == 0
    assert adapt.size_class(adapt.RACE_MIN_BYTES) == adapt.size_class(2 * adapt.RACE_MIN_BYTES - 1)
    assert adapt.races(adapt.RACE_MIN_BYTES, 2, True, True)
    assert adapt.races(adapt.RACE_MAX_BYTES - 1, 2, True, True)
    assert not adapt.races(adapt.RACE_MIN_BYTES - 1, 2, True, True)
    assert not adapt.races(adapt.RACE_MAX_BYTES, 2, True, True)
    # off one node, in device memory or on one rank: never
    assert not adapt.races(adapt.RACE_MIN_BYTES, 2, False, True)
    assert not adapt.races(adapt.RACE_MIN_BYTES, 2, True, False)
    assert not adapt.races(adapt.RACE_MIN_BYTES, 1, True, True)

"""pipeline.ordered_map: every result, in order, with a bounded number in flight, on real threads."""

from __future__ import annotations

import threading
import time

import pytest

from inspector.base.pipeline import ordered_map, worker_count


def test_results_come_in_the_items_order_whatever_order_the_workers_finish_in():
    def slow_first(i: int) -> int:
        time.sleep(0.02 if i % 3 == 0 else 0.0)
        return i * i

    assert list(ordered_map(slow_first, range(30), workers=4)) == [i * i for i in range(30)]


def test_work_runs_on_several_threads_at_once():
    barrier = threading.Barrier(3, timeout=10)  # only passes when three items run at the same time

    def meet(i: int) -> int:
        barrier.wait()
        return i

    assert list(ordered_map(meet, range(6), workers=3)) == list(range(6))


def test_at_most_ahead_items_are_taken_before_the_consumer_asks():
    taken: list[int] = []

    def source():
        for i in range(100):
            taken.append(i)
            yield i

    results = ordered_map(lambda i: i, source(), workers=2, ahead=5)
    assert next(results) == 0
    time.sleep(0.05)
    assert len(taken) <= 6  # 5 in flight, one more taken as the first came out
    results.close()


def test_an_error_is_raised_where_its_result_would_be_and_later_work_is_cancelled():
    started: list[int] = []

    def fail_at_3(i: int) -> int:
        started.append(i)
        if i == 3:
            raise ValueError("bad item 3")
        return i

    out = []
    with pytest.raises(ValueError, match="bad item 3"):
        for r in ordered_map(fail_at_3, range(1000), workers=2, ahead=4):
            out.append(r)
    assert out == [0, 1, 2] and len(started) < 20


def test_worker_count_is_the_setting_or_one_per_core():
    assert worker_count(3) == 3
    assert 1 <= worker_count(0) <= 8


def test_turns_keep_workers_and_the_model_pass_apart():
    """A model pass waits for the file in a worker's hands, and no worker starts one while the pass runs."""
    from inspector.base.pipeline import Turns

    turns = Turns(True)
    log: list[str] = []
    in_hand = threading.Event()

    def worker() -> None:
        with turns.worker():
            log.append("worker starts")
            in_hand.set()
            time.sleep(0.1)
            log.append("worker ends")

    first = threading.Thread(target=worker)
    first.start()
    in_hand.wait(5)
    second = threading.Thread(target=worker)
    with turns.model():
        log.append("model starts")
        second.start()  # must wait for the pass
        time.sleep(0.1)
        log.append("model ends")
    first.join(5)
    second.join(5)
    assert log == ["worker starts", "worker ends", "model starts", "model ends", "worker starts", "worker ends"]


def test_turns_off_lets_everything_run_at_once():
    from inspector.base.pipeline import Turns

    turns = Turns(False)
    with turns.model(), turns.worker(), turns.worker():
        pass

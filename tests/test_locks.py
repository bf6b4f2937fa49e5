"""engine/locks.py: one process at a time on a run folder, a grid or a dataset's preparation."""
import fcntl
import os
import threading
import time

import pytest

from engine.locks import InUseError, held_alone, held_in_turn, holder


def test_holder_names_the_process_that_holds_a_lock_and_none_once_it_is_free(tmp_path):
    lock = tmp_path / "run.lock"
    assert holder(lock) is None and not lock.exists()  # looking creates nothing
    with held_alone(lock, "the run"):
        assert holder(lock).startswith(f"pid {os.getpid()} on ")
        with pytest.raises(InUseError, match=f"^the run is in use by another engine process \\(pid {os.getpid()} on "):
            with held_alone(lock, "the run"):
                pass
    assert holder(lock) is None


def test_a_look_at_a_lock_does_not_turn_away_a_process_taking_it(tmp_path):
    """`holder` takes the lock shared for a moment (a grid's progress line looks at every cell's): a cell starting
    just then must still get its run folder."""
    lock = tmp_path / "run.lock"
    lock.touch()
    looking = threading.Event()

    def look_for_a_while():
        with open(lock) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            looking.set()
            time.sleep(0.05)  # far longer than a real look

    thread = threading.Thread(target=look_for_a_while)
    thread.start()
    looking.wait()
    with held_alone(lock, "the run"):
        pass
    thread.join()


def test_in_turn_waits_for_the_holder_and_says_for_whom(tmp_path, caplog):
    lock, order = tmp_path / "prepare.lock", []
    caplog.set_level("INFO", logger="engine")
    held = threading.Event()

    def first():
        with held_in_turn(lock, "preparing x"):
            held.set()
            time.sleep(0.4)
            order.append("first")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait()
    with held_in_turn(lock, "preparing x"):
        order.append("second")
    thread.join()
    assert order == ["first", "second"]
    assert f"waiting for another engine process (pid {os.getpid()} on " in caplog.text
    assert caplog.text.rstrip().endswith("to finish preparing x")

"""A child that asked to die with its parent does, even when the parent is killed with -9; and granian still lets us
run that request in each of its workers (a tripwire for the part of granian's API we rely on)."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time

import psutil
from granian import Granian

CHILD_OF_A_PARENT = """
import multiprocessing, os, signal, sys, time
from orderly.platform.orphans import die_with_parent

def child():
    die_with_parent(signal.SIGKILL, parent_pid=multiprocessing.parent_process().pid)
    time.sleep(600)

if __name__ == "__main__":
    worker = multiprocessing.Process(target=child)
    worker.start()
    print(worker.pid, flush=True)
    time.sleep(600)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_child_that_asked_to_die_with_its_parent_dies_when_the_parent_is_killed_with_minus_9() -> None:
    parent = subprocess.Popen([sys.executable, "-c", CHILD_OF_A_PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    with parent.stdout:
        child = int(parent.stdout.readline())
        assert not gone(child)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 2
        while not gone(child):
            if time.monotonic() > deadline:
                os.kill(child, signal.SIGKILL)
                raise AssertionError("the child outlived its parent")
            time.sleep(0.01)


def test_a_child_whose_parent_died_before_it_asked_is_signalled_at_once() -> None:
    code = "from orderly.platform.orphans import die_with_parent; die_with_parent(parent_pid=1); print('alive')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == ""


def test_granian_still_calls_a_target_loader_with_the_target_in_each_worker() -> None:
    parameters = inspect.signature(Granian.serve).parameters
    assert "target_loader" in parameters
    assert parameters["wrap_loader"].default is True

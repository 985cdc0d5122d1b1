"""``dyno.bench.child.answer``: how every benchmark child (the fleet's worker processes, ``dyno bench``'s
device) tells its parent what happened: ``("done", report)`` or ``("error", traceback)``, its end of the
pipe closed after, and a parent already gone no crash in the child."""

from __future__ import annotations

import multiprocessing

import pytest

from dyno.bench.child import answer


@pytest.fixture
def pipe():
    parent, child = multiprocessing.Pipe()
    yield parent, child
    parent.close()
    child.close()


def test_the_report_goes_to_the_parent_after_what_the_body_sent_itself_and_the_pipe_is_closed(pipe):
    parent, child = pipe

    def body():
        child.send(("ready", None))
        return {"answers": [1, 2, 3]}

    answer(child, body)
    assert parent.recv() == ("ready", None)
    assert parent.recv() == ("done", {"answers": [1, 2, 3]})
    assert child.closed
    with pytest.raises(EOFError):
        parent.recv()


@pytest.mark.parametrize("error", [ValueError("no plan at p.json"), KeyboardInterrupt("stopped")])
def test_any_failure_reaches_the_parent_as_its_traceback(pipe, error):
    parent, child = pipe

    def body():
        raise error

    answer(child, body)                                   # nothing escapes the child's body
    kind, text = parent.recv()
    assert kind == "error"
    assert f"{type(error).__name__}: {error}" in text.splitlines()[-1] and "in body" in text
    assert child.closed


def test_a_parent_already_gone_is_no_error_in_the_child(pipe):
    parent, child = pipe
    parent.close()
    answer(child, lambda: {"big": "x" * 100_000})          # the send fails, so does the error's: both swallowed
    assert child.closed

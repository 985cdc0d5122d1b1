"""How the analysis uses the machine: the thread and memory-format choices, the device profile's
heads timed directly cut by cut when the node timers fail their check, and the fp16 range check.

The choosers are given stand-in models whose speed is set by the test (a sleep per call, far longer
on the slow side), so what is checked is the choice made from the timings, not any timing itself."""

import importlib
import time

import pytest
import torch
from torch import nn

from dyno import partition
from dyno.offline import machine

measure = importlib.import_module("dyno.offline.measure")  # the package exports the function of that name
precision = importlib.import_module("dyno.offline.precision")


class Paced(nn.Module):
    """Sleeps ``seconds(n, threads, channels_last)`` in its ``n``-th call and records what each call
    ran with, ``(torch threads, channels-last input)``, in ``calls`` (shared with its deep copies)."""

    def __init__(self, seconds):
        super().__init__()
        calls = []
        self.calls = calls
        self.pace = lambda call: (calls.append(call), time.sleep(seconds(len(calls), *call)))  # not deep-copied

    def __deepcopy__(self, memo):
        clone = Paced(lambda *_: 0.0)
        clone.calls, clone.pace = self.calls, self.pace
        return clone

    def forward(self, x):
        self.pace((torch.get_num_threads(), x.is_contiguous(memory_format=torch.channels_last)))
        return x


def test_the_thread_probe_alternates_and_picks_the_faster_count():
    one_is_fast = Paced(lambda _n, threads, _cl: 0.005 if threads == 1 else 0.05)
    assert machine.faster_threads(one_is_fast, torch.zeros(4, 3), 4, 2) == 1
    assert one_is_fast.calls == [(1, False), (2, False), (1, False), (2, False), (2, False), (1, False),
                                 (1, False), (2, False)]  # a warm-up of each, then rounds alternating
    two_is_fast = Paced(lambda _n, threads, _cl: 0.05 if threads == 1 else 0.005)
    assert machine.faster_threads(two_is_fast, torch.zeros(4, 3), 4, 2) == 2
    assert machine.faster_threads(two_is_fast, torch.zeros(4, 3), 4, 1) == 1  # one core: nothing to choose


def test_one_busy_moment_does_not_move_the_thread_choice():
    # two threads are faster but for one run, slowed as if another process had taken the cores then
    spike = Paced(lambda n, threads, _cl: 0.5 if n == 5 else (0.05 if threads == 1 else 0.005))
    assert machine.faster_threads(spike, torch.zeros(4, 3), 4, 2) == 2
    assert spike.calls[4][0] == 2  # the slowed run was one of two threads


def test_the_layout_probe_alternates_and_takes_the_faster_format():
    x = torch.zeros(2, 3, 40, 40)
    clear = Paced(lambda n, _t, cl: 0.5 if n == 4 else (0.005 if cl else 0.05))  # a busy moment in round 1
    assert machine.faster_channels_last(clear, x)
    assert [cl for _t, cl in clear.calls] == [False, True, False, True, True, False, False, True]
    assert clear.calls[3][1]  # the slowed run was a channels-last one
    slower = Paced(lambda _n, _t, cl: 0.06 if cl else 0.05)
    assert not machine.faster_channels_last(slower, x)
    assert machine.faster_channels_last(Paced(lambda _n, _t, cl: 0.04 if cl else 0.05), x)  # 20% faster
    assert not machine.faster_channels_last(clear, torch.zeros(2, 3, 8, 8))  # too small to matter: not timed


def test_the_thread_count_is_rechecked_soon_then_less_often(monkeypatch):
    picks = iter([2, 2, 1, 1, 2])
    monkeypatch.setattr(precision, "faster_threads", lambda *_args: next(picks))
    with machine.torch_threads(2):
        chooser = precision._Threads(nn.Identity(), torch.zeros(20, 3), 50, None)
        assert (chooser.count, chooser.interval) == (2, precision.RETHREAD_FIRST)
        intervals = []
        for index in (3, 5, 8):
            chooser.checked -= chooser.interval + 1  # as if that many seconds had passed
            chooser.recheck(index)
            intervals.append(chooser.interval)
        chooser.recheck(9)  # too soon: not probed
        assert torch.get_num_threads() == 1
    assert intervals == [2 * precision.RETHREAD_FIRST, precision.RETHREAD_FIRST, 2 * precision.RETHREAD_FIRST]
    assert chooser.switches == [[5, 1]]
    assert next(picks) == 2  # the early recheck at 9 did not probe


class Chain(nn.Module):
    """Six convolutions: heads of a few milliseconds, no sub-millisecond ones."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()) for _ in range(6)])

    def forward(self, x):
        return self.layers(x).mean((2, 3))


@pytest.fixture(scope="module")
def chain():
    torch.manual_seed(0)
    model = Chain().eval()
    x = torch.randn(1, 16, 48, 48)
    return model, x, partition.cuts(model, x)


def test_heads_timed_cut_by_cut_grow_from_the_input(chain):
    model, x, cuts = chain
    with machine.torch_threads(1):
        heads, repeats = measure._walk_heads(partition.trace(model), cuts, x, 0.001, 0.05)
    assert len(heads) == len(cuts) and heads[0] == 0.0 and repeats >= 10
    assert all(b >= a for a, b in zip(heads, heads[1:])) and heads[-1] > 0


def test_failed_node_timer_checks_fall_back_to_the_runs_cut_by_cut_then_to_each_head(chain, monkeypatch):
    model, x, cuts = chain
    real = measure._check
    monkeypatch.setattr(measure, "_check", lambda *a, **k: {**real(*a, **k), "ok": False})
    monkeypatch.setattr(measure, "HEAD_CHECK_SECONDS", 0.05)
    monkeypatch.setattr(measure, "WALK_SECONDS", 0.1)
    with machine.torch_threads(1):
        profile = measure.measure("device", model, cuts, x, min_seconds=0.05, tolerance=100.0, codecs=False)
    method = profile.method
    assert method["head"].startswith("direct, every cut from the same runs") and method["walk_checks"]
    assert all(c["ok"] for c in method["walk_checks"])
    assert [c["cut"] for c in method["walk_checks"]] == [c["cut"] for c in method["checks"]]
    assert profile.cuts[0].head_ms == 0.0 and all(c.head_ms > 0 for c in profile.cuts[1:])
    monkeypatch.setattr(measure, "ABS_TOLERANCE_MS", -1.0)
    with machine.torch_threads(1):
        profile = measure.measure("device", model, cuts, x, min_seconds=0.05, tolerance=-1.0, codecs=False)
    assert profile.method["head"] == "direct (cumulative node timers and the runs cut by cut failed the check)"
    assert not any(c["ok"] for c in profile.method["walk_checks"]) and profile.cuts[-1].head_ms > 0


def test_the_fp16_check_is_the_range_of_float16():
    fits = precision._fits_fp16
    assert fits(torch.tensor([-65504.0, 0.0, 65504.0]))
    assert fits(torch.zeros(2, 3, 4, 4).to(memory_format=torch.channels_last))
    for bad in (65505.0, -65505.0, float("inf"), float("-inf"), float("nan")):
        assert not fits(torch.tensor([1.0, bad, -1.0])), bad
    x = torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    x[1, 2, 4, 0] = -7e4
    assert not fits(x) and fits(x.clamp(-6e4, 6e4))

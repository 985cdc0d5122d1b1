"""The kernel-shaped link: two network namespaces joined by a veth pair, tbf on the client side. A known
number of bytes crosses at the set rate (within 10%), a rate change along a trace takes effect within
100 ms, and nothing is left behind. Skipped, with the reason, where the machine cannot make the link."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from dyno.emulate.netns import KernelLink, available
from dyno.emulate.traces import Trace

WHY = available()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no kernel-shaped link here: {WHY}")

RECEIVER = """
import json, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); marks = []; n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    n += len(b); marks.append((time.monotonic(), n))
print(json.dumps(marks), flush=True)
"""
SENDER = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
total, seconds, chunk = int(sys.argv[3]), float(sys.argv[4]), b"x" * 16384
end, sent = time.monotonic() + seconds, 0
while sent < total and time.monotonic() < end:
    s.sendall(chunk); sent += len(chunk)
s.close()
"""


def _transfer(link: KernelLink, nbytes: int, seconds: float, port: int, during=None) -> list[tuple[float, int]]:
    """Send from the client namespace to the server namespace; the receiver's (monotonic time, bytes so
    far) after each read. ``during(start)`` runs in this process while the bytes flow."""
    receiver = subprocess.Popen(["ip", "netns", "exec", link.server_ns, sys.executable, "-c", RECEIVER,
                                 link.server_ip, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "listening"
        sender = subprocess.Popen(["ip", "netns", "exec", link.client_ns, sys.executable, "-c", SENDER,
                                   link.server_ip, str(port), str(nbytes), str(seconds)])
        if during is not None:
            during(time.monotonic())
        assert sender.wait(seconds + 30) == 0
        out, _ = receiver.communicate(timeout=seconds + 30)
        return [tuple(m) for m in json.loads(out.strip().splitlines()[-1])]
    finally:
        receiver.kill()


def test_a_known_number_of_bytes_crosses_at_the_set_rate():
    with KernelLink.create(rate_bps=4e6) as link:
        marks = _transfer(link, 1_000_000, 30.0, 5101)
        assert link.rate_bps == 4e6 and "tbf" in link.qdisc_stats()
    assert marks[-1][1] == -(-1_000_000 // 16384) * 16384          # every byte sent (whole 16 KiB chunks)
    # payload bytes over the time from the first to the last read: TCP/IP headers take ~4.5% of the rate
    rate = (marks[-1][1] - marks[0][1]) * 8 / (marks[-1][0] - marks[0][0])
    assert 0.90 * 4e6 <= rate <= 1.02 * 4e6
    assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if n.startswith((link.server_ns, link.client_ns))]


def test_a_rate_change_along_a_trace_takes_effect_within_100_ms():
    trace = Trace([0.0, 1.0, 3.0], [1e6, 16e6], name="step")
    with KernelLink.create(rate_bps=1e6) as link:
        replays = []

        def replay(start: float) -> None:
            context = link.replay(trace, start=start, stop_after=1.5)
            context.__enter__()
            replays.append((context, start))

        marks = _transfer(link, 10**9, 2.5, 5102, during=replay)
        context, start = replays[0]
        context.__exit__(None, None, None)
        assert link.changes >= 3          # add, then the trace's two rates
    # bytes per 25 ms bin, from the replay's start
    bins: dict[int, int] = {}
    previous = None
    for at, total in marks:
        if previous is not None:
            bins[int((at - start) / 0.025)] = bins.get(int((at - start) / 0.025), 0) + total - previous
        previous = total
    rate = {k: v * 8 / 0.025 for k, v in bins.items()}
    slow = [r for k, r in rate.items() if 8 <= k < 36]          # 0.2 .. 0.9 s: 1 Mbit/s
    assert slow and max(slow) < 2e6
    first_fast = min(k for k, r in rate.items() if k >= 40 and r > 8e6)   # after 1.0 s
    assert (first_fast + 1) * 0.025 - 1.0 <= 0.100, f"the new rate showed {((first_fast + 1) * 25) - 1000} ms late"

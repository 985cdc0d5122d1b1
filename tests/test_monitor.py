"""Run-time monitors: the bandwidth estimator's response to a step, and the other estimates."""

from __future__ import annotations

import pytest
from plan_factory import make_plan

from dyno.errors import ConfigError
from dyno.monitor import DEVICE_STALE_S, SERVER_STALE_S, BandwidthEstimator, Monitors
from dyno.policy import Estimates


def feed(est: BandwidthEstimator, rate_bps: float, n: int, nbytes: int = 10_000) -> list[float]:
    out = []
    for _ in range(n):
        est.update(nbytes, nbytes * 8 / rate_bps)
        out.append(est.estimate_bps)
    return out


def test_harmonic_mean_of_the_window():
    est = BandwidthEstimator(window=4)
    assert est.estimate_bps is None
    est.update(1000, 0.008)     # 1 Mbit/s
    est.update(1000, 0.002)     # 4 Mbit/s
    assert est.estimate_bps == pytest.approx(2 / (1 / 1e6 + 1 / 4e6))   # 1.6 Mbit/s, not the 2.5 mean
    est.update(0, 0.1)          # no information: ignored
    est.update(1000, float("nan"))
    assert est.samples == 2


def test_a_late_reading_and_its_correction_cancel():
    # on a real network a reply read 5 ms late makes its frame look 5 ms slow and the next 5 ms fast
    est = BandwidthEstimator(window=8)
    feed(est, 8e6, 8, nbytes=1000)                      # 1 ms a frame
    est.update(1000, 0.001 + 0.005)
    assert est.estimate_bps < 5e6                        # alone it reads as a 40% drop
    est.update(1000, 0.001 - 0.005)                      # the correction, below zero
    assert est.estimate_bps == pytest.approx(8e6)
    est.reset()
    est.update(1000, -0.002)                             # no positive time yet: no estimate
    assert est.estimate_bps is None
    est.update(1000, 0.003)
    assert est.estimate_bps == pytest.approx(16_000 / 0.001)


@pytest.mark.parametrize("window", [1, 4, 8, 16])
@pytest.mark.parametrize("before, after", [(8e6, 1e6), (1e6, 8e6)])
def test_step_change_settles_in_window_samples(window, before, after):
    est = BandwidthEstimator(window=window)
    feed(est, before, 3 * window)
    trajectory = feed(est, after, window)
    for k, value in enumerate(trajectory, 1):   # the stated response, sample by sample
        assert value == pytest.approx(window / ((window - k) / before + k / after))
    assert trajectory[-1] == pytest.approx(after)              # settled after exactly `window` samples
    assert est.settle_samples == window
    if window > 1:
        assert trajectory[-2] != pytest.approx(after)          # and not before


def test_a_drop_is_believed_fast_a_rise_slowly():
    down, up = BandwidthEstimator(8), BandwidthEstimator(8)
    feed(down, 10e6, 8)
    feed(up, 1e6, 8)
    assert feed(down, 1e6, 1)[0] < 0.5 * 10e6           # one slow transfer halves the estimate
    assert feed(down, 1e6, 2)[-1] < 3e6                 # within 3x of the new rate after 3 samples
    assert feed(up, 10e6, 4)[-1] < 2e6                  # good news: still below 2 Mbit/s after 4


def test_one_outlier_burst_barely_moves_it():
    est = BandwidthEstimator(8)
    feed(est, 1e6, 8)
    est.update(10_000, 10_000 * 8 / 1e9)                # one transfer at 1 Gbit/s
    assert est.estimate_bps < 1.15e6


def test_the_wire_clock_takes_a_late_reading_back_with_the_next_frame():
    # frames of 1 ms queued back to back on the link; the client reads the second reply 5 ms late
    from dyno.runtime.inflight import WireClock

    clock, est = WireClock(), BandwidthEstimator(window=8)
    clock.note_rtt(0.0005)
    late = {2: 0.005}
    for i in range(8):
        arrival = 0.0005 + 0.001 * (i + 1)               # written at 0, one after another on the link
        transfer, _ = clock.frame(0.0, arrival + late.get(i, 0.0), server_s=0.0)
        est.update(1000, transfer)
    assert est.estimate_bps == pytest.approx(8e6)       # 1000 B a ms, as if no reading had been late


def test_the_wire_clock_reads_nothing_from_an_idle_link_s_frame_faster_than_the_round_trip():
    # probes now and then onto an idle link: one read a little early against the least round trip
    # corrects nothing (no frame was ahead of it) and says nothing
    from dyno.runtime.inflight import WireClock

    clock = WireClock()
    clock.note_rtt(0.002)
    assert clock.frame(0.0, 0.003, server_s=0.0)[0] == pytest.approx(0.001)
    assert clock.frame(1.0, 1.0019, server_s=0.0)[0] is None


def test_window_validated():
    with pytest.raises(ConfigError):
        BandwidthEstimator(0)


def test_the_server_factor_follows_a_slower_reading_once_three_agree_and_a_faster_at_once():
    """A cold tail's first reply (fmnist-resnet's cut 7 read 12-24x its profile in dyno demo) does not
    price the cloud alone: the initial factor fills the window until it holds SLOWDOWN_PRIOR replies."""
    plan = make_plan(5, seed=0)
    m = Monitors(plan, initial_server_factor=1.5)
    cut = plan.cuts[2]
    m.record_reply(2, compute_ms=cut.cloud_ms[1] * 20, batch=1, queue_ms=0.0, headroom=None, at=1.0)
    assert m.estimates().server_factor(2) == pytest.approx(1.5)
    for at in (1.1, 1.2, 1.3):
        m.record_reply(2, compute_ms=cut.cloud_ms[1] * 3, batch=1, queue_ms=0.0, headroom=None, at=at)
    assert m.estimates().server_factor(2) == pytest.approx(3.0)
    fast = Monitors(plan, initial_server_factor=1.5)   # a faster server, though, counts from its first reply
    fast.record_reply(2, compute_ms=cut.cloud_ms[1] * 0.5, batch=1, queue_ms=0.0, headroom=None, at=1.0)
    assert fast.estimates().server_factor(2) == pytest.approx(0.5)
    assert fast.estimates().server_ms_factor == pytest.approx(0.5)   # the cloud as a whole too


def test_a_dear_tail_at_one_cut_does_not_price_the_others():
    """In dyno demo the short tail after fmnist-resnet's cut 7 read 2-4x its profile, the whole model
    1.2-1.6x; one factor over both priced cloud-only by cut 7's replies, and DynO split at cut 7 (~550/s)
    where cloud-only ran 750-820/s."""
    plan = make_plan(5, seed=0)
    m = Monitors(plan, initial_server_factor=1.3, initial_server_factors={0: 1.3})   # calibrated at cut 0
    for i in range(6):
        m.record_reply(3, compute_ms=plan.cuts[3].cloud_ms[1] * 3.0, batch=1, queue_ms=0.0, headroom=None,
                       at=1.0 + i / 10)
    est = m.estimates()
    assert est.server_factor(3) == pytest.approx(3.0)
    assert est.server_factor(0) == pytest.approx(1.3)   # as calibrated there
    assert est.server_factor(2) == pytest.approx(3.0)   # no word on cut 2: the cloud as a whole
    m.record_reply(0, compute_ms=plan.cuts[0].cloud_ms[1] * 1.2, batch=1, queue_ms=0.0, headroom=None, at=2.0)
    est = m.estimates()
    assert (est.server_factor(0), est.server_factor(3)) == (pytest.approx(1.2), pytest.approx(3.0))
    m.reset()
    assert m.estimates().server_ms_factors == ((0, 1.3),)


def test_the_batch_is_kept_per_cut_and_a_calibrated_one_stands_until_replies_outvote_it():
    plan = make_plan(5, seed=0)
    m = Monitors(plan, initial_batches={0: 6})   # cloud-only's requests, as calibrated, ran in sixes
    assert m.estimates().batch_at(0, 1) == 6 and m.estimates().batch_at(3, 2) == 2
    reply = lambda cut, batch, at: m.record_reply(cut, compute_ms=1.0, batch=batch, queue_ms=0.0,  # noqa: E731
                                                   headroom=None, at=at)
    for i in range(4):
        reply(3, 1, 1.0 + i / 10)
    reply(0, 2, 2.0)
    est = m.estimates()
    assert est.batch_at(3, 8) == 1          # a split whose replies ran alone
    assert est.batch_at(0, 1) == 6          # one reply does not outvote the calibration
    for i in range(4):
        reply(0, 2, 2.1 + i / 10)
    assert m.estimates().batch_at(0, 1) == 2


def test_the_codec_slowdown_is_given_and_grows_as_the_heads_run_slower():
    # the encoding runs on the device's CPU like the overheads: a busier device encodes slower too
    plan = make_plan(5, seed=0)
    m = Monitors(plan, initial_slowdown=2.0, codec_slowdown=2.0, window=4)
    assert m.estimates().codec_slowdown == 2.0
    cut = plan.cuts[2]
    for i in range(4):
        m.record_device(cut.id, 3.0 * cut.device_ms, at=1.0 + i / 10)    # heads at 3x: 1.5x busier
    assert m.estimates().codec_slowdown == pytest.approx(3.0)
    assert Monitors(plan).estimates().codec_slowdown == 1.0
    with pytest.raises(ConfigError):
        Monitors(plan, codec_slowdown=0.0)


def test_estimates_are_republished_only_when_a_figure_moves():
    plan = make_plan(5, seed=0)
    m = Monitors(plan, initial_slowdown=2.0, window=4)
    cut = plan.cuts[2]
    for _ in range(4):
        m.record_device(2, cut.device_ms * 2.0, at=0.0)
    first = m.estimates()
    for _ in range(2):
        m.record_device(2, cut.device_ms * 2.008, at=0.0)  # the median moves 0.2%: the same object,
    assert m.estimates() is first                           # nothing for the policy to re-evaluate
    for _ in range(3):
        m.record_device(2, cut.device_ms * 2.2, at=0.0)  # 10%: new figures
    assert m.estimates() is not first and m.estimates().device_slowdown == pytest.approx(2.2)


def test_monitors_estimates():
    plan = make_plan(5, seed=0)
    m = Monitors(plan, initial_bandwidth_bps=2e6, initial_rtt_ms=30, initial_slowdown=8.0, window=4)
    assert m.estimates() == Estimates(bandwidth_bps=2e6, rtt_ms=30, device_slowdown=8.0)
    m.record_transfer(1000, 0.004)
    assert m.estimates().bandwidth_bps == pytest.approx(2e6)
    cut = plan.cuts[2]
    for factor in (3.0, 4.0, 100.0):                    # median: the 100x outlier does not win
        m.record_device(2, cut.device_ms * factor)
    assert m.estimates().device_slowdown == pytest.approx(4.0)
    m.record_device(0, 5.0)                             # input cut: profiled 0 ms, ignored
    assert m.estimates().device_slowdown == pytest.approx(4.0)
    m.record_reply(2, compute_ms=cut.cloud_ms[8] * 1.5, batch=8, queue_ms=12.0, headroom=0.4, at=10.0)
    e = m.estimates()                                   # compute_ms: the batch of 8 samples' tail time
    assert e.server_ms_factor == 1.0 and e.queue_ms == 12.0   # one reply does not outvote the initial factor
    own = cut.cloud_ms[8] * 1.5 / 8 / 1000              # this device's share of that batch, seconds
    assert m.own_cloud_use == pytest.approx(own)
    assert e.cloud_capacity == pytest.approx(own + 0.4)     # what it uses plus what is left
    m.record_reply(2, compute_ms=cut.cloud_ms[1], batch=1, queue_ms=2.0, headroom=0.0, at=10.5, decode_ms=1.0)
    assert m.own_cloud_use == pytest.approx(own + (cut.cloud_ms[1] + 1.0) / 1000)
    assert m.estimates().queue_ms == pytest.approx(7.0)     # the median of 12 and 2
    m.record_reply(2, compute_ms=cut.cloud_ms[1], batch=1, queue_ms=2.0, headroom=0.0, at=11.2)
    assert m.own_cloud_use == pytest.approx(cut.cloud_ms[1] * 2 / 1000 + 1.0 / 1000)   # the first left the window
    m.record_reply(2, compute_ms=0.001, batch=1, queue_ms=0.0, headroom=0.0, at=20.0)
    assert m.estimates().cloud_capacity >= 0.01             # a saturated cloud is slow, never impossible
    m.record_rtt(50)
    m.record_rtt(70)
    m.record_rtt(60)
    assert m.estimates().rtt_ms == 60
    m.reset()
    assert m.estimates().bandwidth_bps == 2e6 and m.estimates().device_slowdown == 8.0


def test_the_client_s_own_work_slows_with_the_heads_never_speeds_up():
    plan = make_plan(5, seed=0)
    cut = plan.cuts[2]
    m = Monitors(plan, initial_slowdown=2.0, overheads_ms=(0.9, 0.4), window=3)
    assert (m.estimates().offload_overhead_ms, m.estimates().local_overhead_ms) == (0.9, 0.4)
    for _ in range(3):                                  # heads 3x the profile where 2x was emulated
        m.record_device(2, cut.device_ms * 3.0)
    e = m.estimates()
    assert (e.offload_overhead_ms, e.local_overhead_ms) == (pytest.approx(1.35), pytest.approx(0.6))
    for _ in range(3):                                  # faster than emulated: the overheads as measured
        m.record_device(2, cut.device_ms * 1.0)
    assert (m.estimates().offload_overhead_ms, m.estimates().local_overhead_ms) == (0.9, 0.4)


def test_a_device_sample_after_a_gap_starts_the_window_afresh():
    plan = make_plan(5, seed=0)
    cut = plan.cuts[2]
    m = Monitors(plan, window=8)
    for i in range(8):                                  # a burst of load: heads 9x the profile
        m.record_device(2, cut.device_ms * 9.0, at=0.1 * i)
    m.record_device(2, cut.device_ms * 1.0, at=0.9)     # one fast head within the window: the median holds
    assert m.estimates().device_slowdown == pytest.approx(9.0)
    later = 0.9 + DEVICE_STALE_S + 0.01                 # after the gap the window starts afresh
    m.record_device(2, cut.device_ms * 1.2, at=later)
    m.record_device(2, cut.device_ms * 1.2, at=later + 0.001)
    assert m.estimates().device_slowdown == pytest.approx(1.2)


def test_one_slow_first_head_does_not_move_the_slowdown():
    plan = make_plan(5, seed=0)
    cut = plan.cuts[2]
    m = Monitors(plan, initial_slowdown=2.0, window=8)
    m.record_device(2, cut.device_ms * 9.0)             # the first head in a new thread, say
    assert m.estimates().device_slowdown == pytest.approx(2.0)
    m.record_device(2, cut.device_ms * 9.0)
    m.record_device(2, cut.device_ms * 9.0)             # three samples: they are the estimate
    assert m.estimates().device_slowdown == pytest.approx(9.0)


def test_the_servers_handling_per_request_is_its_cpu_beyond_compute_and_decode():
    plan = make_plan(5, seed=0)
    m = Monitors(plan, initial_server_overhead_ms=0.5)
    tail = plan.cuts[2].cloud_ms[8]
    assert m.estimates().server_overhead_ms == 0.5   # as calibrated, until replies say
    for k in range(3):   # batches of 8: a sample's share of compute, plus 0.2 ms decode, plus 1.3 ms handling
        m.record_reply(2, compute_ms=tail, batch=8, queue_ms=0.0, headroom=None, at=k, decode_ms=0.2,
                       cpu_ms=tail / 8 + 0.2 + 1.3)
    assert m.estimates().server_overhead_ms == pytest.approx(1.3)
    m.record_reply(2, compute_ms=tail, batch=8, queue_ms=0.0, headroom=None, at=4)   # an older server: no cpu_ms
    assert m.estimates().server_overhead_ms == pytest.approx(1.3)


def test_the_servers_handling_is_part_of_the_clouds_cost():
    from dyno.policy.model import PerfModel, predict

    plan = make_plan(5, seed=0)
    model = PerfModel(plan)
    i = next(k for k, r in enumerate(model.rows) if r.offloaded)
    est = Estimates(bandwidth_bps=1e9, device_slowdown=1.0, cloud_capacity=0.5)
    handled = Estimates(bandwidth_bps=1e9, device_slowdown=1.0, cloud_capacity=0.5, server_overhead_ms=2.0)
    bare, dear = predict(plan, model.rows[i], est), predict(plan, model.rows[i], handled)
    assert dear.cloud_s == pytest.approx(bare.cloud_s + 0.002)   # 2 ms more CPU per inference
    ev = model.evaluate(handled)
    assert ev.cloud[i] == pytest.approx(dear.cloud_s * 1000 / 0.5)   # the cloud stage: cost over capacity
    assert ev.cloud[model.device_only] == 0.0                         # the device-only row uses no cloud


def test_a_cut_s_readings_are_forgotten_once_replies_come_only_from_elsewhere():
    """A cut's cold replies, kept for ever, kept DynO off cut 0 for a whole dyno bench run (its probes
    went to deeper cuts and never refreshed it): after SERVER_STALE_S it is priced as calibrated again."""
    plan = make_plan(5, seed=0)
    m = Monitors(plan, initial_server_factors={0: 1.1}, initial_batches={0: 4})
    for i in range(4):   # cut 0's replies read 5x and ran alone
        m.record_reply(0, compute_ms=plan.cuts[0].cloud_ms[1] * 5, batch=1, queue_ms=0.0, headroom=None, at=i / 10)
    assert (m.estimates().server_factor(0), m.estimates().batch_at(0, 8)) == (pytest.approx(5.0), 1)
    m.record_reply(3, compute_ms=plan.cuts[3].cloud_ms[1], batch=1, queue_ms=0.0, headroom=None,
                   at=0.3 + SERVER_STALE_S / 2)
    assert m.estimates().server_factor(0) == pytest.approx(5.0)   # not yet
    m.record_reply(3, compute_ms=plan.cuts[3].cloud_ms[1], batch=1, queue_ms=0.0, headroom=None,
                   at=0.31 + SERVER_STALE_S)
    est = m.estimates()
    assert (est.server_factor(0), est.batch_at(0, 8), est.server_factor(3)) == (pytest.approx(1.1), 4,
                                                                                 pytest.approx(1.0))


def test_a_cut_s_readings_are_forgotten_on_the_device_s_clock_when_no_reply_comes():
    """Three probes that found the server idle read 3.25 against a calibrated 1.6 and, with no reply
    after them, kept DynO on the device for 10 s of a 15 s bench run: the heads it ran meanwhile age the
    readings too, and with no cut's readings left the cloud as a whole is priced as calibrated again."""
    plan = make_plan(5, seed=0)
    m = Monitors(plan, initial_server_factor=1.3, initial_server_factors={0: 1.6})
    for i in range(3):
        m.record_reply(0, compute_ms=plan.cuts[0].cloud_ms[1] * 3.25, batch=1, queue_ms=0.0, headroom=None,
                       at=i / 10)
    last = len(plan.cuts) - 1
    head_ms = plan.cuts[last].device_ms
    m.record_device(last, head_ms, at=0.2 + SERVER_STALE_S / 2)
    est = m.estimates()
    assert (est.server_factor(0), est.server_factor(2)) == (pytest.approx(3.25), pytest.approx(3.25))  # not yet
    m.record_device(last, head_ms, at=0.21 + SERVER_STALE_S)
    est = m.estimates()
    assert (est.server_factor(0), est.server_factor(2)) == (pytest.approx(1.6), pytest.approx(1.3))

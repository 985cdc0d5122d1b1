"""Offline analysis: profiles, precision analysis and the plan they make, checked against direct
head -> codec encode -> decode -> tail evaluations on real Fashion-MNIST images."""

import json

import numpy as np
import pytest
import torch
from conftest import needs_fmnist
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dyno import offline, packing, partition, zoo
from dyno.codec import Expected, decode, encode
from dyno.errors import DataError, PlanError
from dyno.offline import pipeline
from dyno.plan import Plan

pytestmark = needs_fmnist

N = 300  # analysis samples: small, but enough for the knee search to stop and confirm


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared two-core machine two threads are often several times slower."""
    with offline.torch_threads(1):
        yield


class PadNet(nn.Module):
    """conv-bn-relu, a zero pad (a cut carrying the same values as the one before), conv-bn-relu,
    pooling, flatten, linear: every kind of cut the analysis treats specially."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.relu1 = nn.ReLU()
        self.pad = nn.ZeroPad2d(1)
        self.conv2 = nn.Conv2d(12, 24, 3, stride=2)
        self.bn2 = nn.BatchNorm2d(24)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.pad(self.relu1(self.bn1(self.conv1(x))))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture(scope="module")
def model():
    """PadNet trained for a few hundred steps (a few seconds): predictions that quantisation can move."""
    torch.manual_seed(0)
    net = PadNet()
    x, y = zoo.load_dataset("fashion-mnist", split="train").tensors(6000)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _step in range(250):
        i = torch.randint(len(x), (128,))
        loss = nn.functional.cross_entropy(net(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def dataset():
    return zoo.load_dataset("fashion-mnist", split="test")


@pytest.fixture(scope="module")
def plan(model, dataset, tmp_path_factory):
    config = offline.SearchConfig(batch_size=50, min_samples=100, fp16="all")
    plan = offline.analyze(model, data=dataset, limit=N, channels_last=False, config=config,
                            bytes_samples=6, codec_samples=3, batch_sizes=(1, 4))
    plan.save(tmp_path_factory.mktemp("plan") / "padnet.json")
    return plan


@pytest.fixture(scope="module")
def sample(dataset):
    x, y, _ = offline.load_sample(dataset, N)
    return x, y


def _direct(model, cut, x, transform, batch=50):
    """Predictions of tail(decode(encode(head(x)))): the real codec on every sample's activation
    (head and tail in batches of ``batch``, as the analysis runs them)."""
    head, tail = partition.split(model, cut)
    preds = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            activations = head(x[start: start + batch])
            sent = np.stack([transform(a.numpy()) for a in activations])
            preds.append(tail(torch.from_numpy(sent)).argmax(1))
    return torch.cat(preds)


def _codec(bits, nonnegative, clip):
    def transform(a):
        frame = encode(a, bits=bits, mode="shuffle-lz4", nonnegative=nonnegative, clip=clip)
        return decode(frame, Expected(shape=a.shape))
    return transform


def _image(spec, codec, quality):
    """The input as the cloud decodes it from an image sent with ``codec`` at ``quality``."""
    def transform(a):
        pixels = np.rint((a[0] * spec.std[0] + spec.mean[0]) * 255).astype(np.uint8)
        decoded = decode(encode(pixels, bits=quality, mode=codec), Expected(shape=pixels.shape))
        return ((np.float32(decoded) / np.float32(255) - np.float32(spec.mean[0])) / np.float32(spec.std[0]))[None]
    return transform


# --------------------------------------------------------------------------------- quantisation


_shapes = st.sampled_from([(1,), (7,), (3, 5, 5), (8, 4, 4), (2, 33)])


@settings(max_examples=60, deadline=None)
@given(shape=_shapes, scale=st.floats(-4, 4), kind=st.sampled_from(["normal", "relu", "positive", "constant"]),
       bits=st.integers(1, 16), nonnegative=st.booleans(), clip=st.sampled_from([None, 0.3, 2.0]),
       seed=st.integers(0, 2 ** 16))
def test_fake_quant_is_the_codec_bit_for_bit(shape, scale, kind, bits, nonnegative, clip, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((5, *shape), generator=g) * 10 ** scale
    if kind == "relu":
        x = x.relu()
    elif kind == "positive":
        x = x.abs() + 10 ** scale
    elif kind == "constant":
        x[1] = 0.75
        x[2] = 0.0
    nonnegative = nonnegative and kind in ("relu", "positive")
    if clip is not None:
        span = float(x.abs().max())
        clip = (0.0 if nonnegative else -clip * span, clip * span)
    got = offline.fake_quant(x, bits, nonnegative=nonnegative, clip=clip)
    for i in range(len(x)):
        want = _codec(bits, nonnegative, clip)(x[i].numpy())
        assert np.array_equal(got[i].numpy(), want), (i, bits)
    assert torch.equal(got, offline.fake_quant_reference(x, bits, nonnegative=nonnegative, clip=clip))


def test_fake_quant_keeps_channels_last_and_fp16_is_the_codec():
    x = torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    q = offline.fake_quant(x, 5)
    assert q.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(q.contiguous(), offline.fake_quant(x.contiguous(), 5))
    y = torch.randn(3, 40) * 1e3
    for i in range(3):
        want = decode(encode(y[i].numpy(), mode="fp16"), Expected(shape=(40,)))
        assert np.array_equal(offline.fake_fp16(y)[i].numpy(), want)


# ------------------------------------------------------------------------------------- the plan


def test_every_cut_has_the_options_the_scheduler_needs(plan, model):
    cuts = plan.cuts
    assert [c.name for c in cuts] == [c.name for c in partition.cuts(model, torch.zeros(1, 1, 28, 28))]
    assert not cuts[-1].options
    for cut in cuts[:-1]:
        labels = {o.label for o in cut.options}
        assert {"fp32", "fp16"} | {f"shuffle-lz4:{b}" for b in range(1, 17)} <= labels, cut.name
        fp32 = cut.option("fp32")
        assert fp32.measured and fp32.accuracy == plan.accuracy_fp32 and fp32.samples == N
        assert fp32.bytes > 4 * cut.numel  # the frame's metadata counts too
        assert all(o.bytes > 0 and o.encode_ms >= 0 and o.decode_ms >= 0 for o in cut.options)
        lz4 = [cut.option("shuffle-lz4", b) for b in range(1, 17)]
        assert lz4[-1].bytes <= fp32.bytes
        assert any(o.measured for o in lz4) and any(not o.measured for o in lz4)
        for o in lz4:
            assert o.measured == (o.samples > 0)
            assert o.note or (o.measured and o.samples == N)
        assert cut.device_ms >= 0 and set(cut.cloud_ms) == {1, 4}
    images = {o.label for o in cuts[0].options if o.codec in ("jpeg", "webp")}
    assert images == {f"{c}:{q}" for c in ("jpeg", "webp") for q in packing.IMAGE_QUALITIES}
    assert plan.input_spec is not None and plan.input_spec.image_mode == "L"
    assert 0.5 < plan.accuracy_fp32 <= 1.0


def test_head_and_tail_times_grow_and_shrink(plan):
    device = [c.device_ms for c in plan.cuts]
    assert device[0] == 0.0 and device[-1] > 0
    assert plan.cuts[-1].cloud_ms[1] == 0.0 and plan.cuts[0].cloud_ms[4] > plan.cuts[-2].cloud_ms[4]
    assert plan.notes["device_profile"]["threads"] == 1
    assert "checks" in plan.notes["device_profile"]["method"]


def test_spot_checked_entries_equal_a_direct_evaluation(plan, model, sample):
    x, y = sample
    cuts = partition.cuts(model, x[:1])
    with torch.no_grad():
        reference = model(x).argmax(1)
    assert (reference == y).float().mean().item() == pytest.approx(plan.accuracy_fp32)
    # Every cut's 1-point knee, its measured neighbour below (often stopped early), any clipped entry and
    # every entry measured on part of the sample (screened or stopped early); the input cut's images too.
    spots = []
    for cut, cut_plan in zip(cuts[:-1], plan.cuts):
        knee = plan.min_bits(cut_plan, 0.01)
        spots += [(cut, o, _codec(o.bits, cut.nonnegative, o.clip)) for o in cut_plan.options
                  if o.codec == "shuffle-lz4" and o.measured
                  and (o.bits in (knee.bits, knee.bits - 1) or o.clip is not None or o.samples < N)]
    spots += [(cuts[0], o, _image(plan.input_spec, o.codec, o.bits)) for o in plan.cuts[0].options
              if o.codec in packing.IMAGE_CODECS and o.measured and o.samples < N]
    assert any(o.samples < N for _, o, _ in spots) and any(o.samples == N for _, o, _ in spots)
    for cut, option, transform in spots:
        n = option.samples
        pred = _direct(model, cut, x[:n], transform)
        correct = (pred == y[:n]).sum().item()
        fp32_correct = (reference[:n] == y[:n]).sum().item()
        # The plan reports fp32 accuracy minus the paired drop seen on the samples measured.
        assert plan.accuracy_fp32 - option.accuracy == pytest.approx((fp32_correct - correct) / n, abs=1e-9), \
            (cut.name, option.label)
        if n == N:
            assert option.accuracy == pytest.approx(correct / N, abs=1e-9)
            assert option.agreement == pytest.approx((pred == reference).sum().item() / N, abs=1e-9)
    assert len(spots) >= 8


def test_the_input_cut_as_an_image_equals_a_direct_evaluation(plan, model, sample):
    x, y = sample
    spec = plan.input_spec
    option = next(o for o in plan.cuts[0].options if o.codec == "jpeg" and o.measured and o.samples == N)
    correct = 0
    with torch.no_grad():
        for i in range(N):
            pixels = np.rint((x[i, 0].numpy() * spec.std[0] + spec.mean[0]) * 255).astype(np.uint8)
            decoded = decode(encode(pixels, bits=option.bits, mode="jpeg"), Expected(shape=pixels.shape))
            tensor = (np.float32(decoded) / np.float32(255) - np.float32(spec.mean[0])) / np.float32(spec.std[0])
            correct += int(model(torch.from_numpy(tensor)[None, None]).argmax(1).item() == y[i].item())
    assert option.accuracy == pytest.approx(correct / N, abs=1e-9)


def test_16_bits_is_fp32_within_noise(plan, model, sample):
    x, _ = sample
    cuts = partition.cuts(model, x[:1])
    with torch.no_grad():
        reference = model(x).argmax(1)
        for cut, cut_plan in zip(cuts[:-1], plan.cuts):
            head, tail = partition.split(model, cut)
            pred = tail(offline.fake_quant(head(x), 16, nonnegative=cut.nonnegative)).argmax(1)
            assert (pred == reference).float().mean().item() >= 1 - 2 / N, cut.name
            assert abs(plan.drop(cut_plan.option("shuffle-lz4", 16))) <= 2 / N
            assert abs(plan.drop(cut_plan.option("fp16"))) <= 2 / N


def test_accuracy_rises_with_bits_and_knees_are_confirmed(plan):
    """What the analysis guarantees at every cut, by the construction of the search and of the inferred
    entries rather than by the luck of one sample (the trained weights differ from CPU to CPU):

    - the 1-point and 0.5-point knees are measured on every sample, and the width below the 1-point
      knee was measured too and fails;
    - above the 0.5-point knee the drop is within 0.5 point up to the sampling error the analysis
      reports: a measured width exceeds it by at most ``z`` of its standard errors (``drop_se``), an
      inferred one (interpolated between measured widths, or halving above them) by at most ``z``
      standard errors of the measured widths above the knee.
    """
    z = offline.SearchConfig().z
    for cut in plan.cuts[:-1]:
        one = plan.min_bits(cut, 0.01)
        assert one is not None and one.measured and one.samples == N, cut.name
        below = cut.option("shuffle-lz4", one.bits - 1) if one.bits > 1 else None
        if below is not None:
            assert below.measured and plan.drop(below) > 0.01, cut.name  # the knee's neighbour was measured too
        half = plan.min_bits(cut, 0.005)
        assert half is not None and half.bits >= one.bits and half.measured and half.samples == N
        above = [o for o in cut.options if o.codec == "shuffle-lz4" and o.bits >= half.bits]
        measured = [o for o in above if o.measured]
        assert all(o.drop_se is not None and o.samples > 0 for o in measured)
        bounds = [0.005 + z * o.drop_se for o in measured]
        for o, bound in zip(measured, bounds):
            assert plan.drop(o) <= bound + 1e-9, (cut.name, o.label, plan.drop(o), o.drop_se)
        for o in above:
            if not o.measured:
                assert o.note.startswith("inferred") and plan.drop(o) <= max(bounds) + 1e-9, (cut.name, o.label)


def test_a_padding_cut_shares_the_measurements_of_its_input(plan):
    names = [c.name for c in plan.cuts]
    relu, pad = plan.cuts[names.index("relu1")], plan.cuts[names.index("pad")]
    assert plan.notes["shared_cuts"].get(str(pad.id)) == relu.id
    for bits in range(1, 17):
        a, b = relu.option("shuffle-lz4", bits), pad.option("shuffle-lz4", bits)
        assert (a.accuracy, a.measured, a.samples) == (b.accuracy, b.measured, b.samples)
        if b.measured:
            assert "identical tail inputs" in b.note
    assert pad.option("fp32").bytes > relu.option("fp32").bytes  # the padded tensor is larger


def test_plan_file_round_trips(plan, tmp_path):
    path = plan.save(tmp_path / "p.json")
    assert Plan.load(path) == plan


# ------------------------------------------------------------------------- ensure_plan and profiles


@pytest.fixture
def registered(model, tmp_path, monkeypatch):
    monkeypatch.setenv("DYNO_CACHE", str(tmp_path / "cache"))
    zoo.register_model("test-padnet", PadNet, input_shape=(1, 28, 28), num_classes=10,
                       default_data="fashion-mnist", preprocess=None, replace=True)
    weights = tmp_path / "padnet.pt"
    torch.save(model.state_dict(), weights)
    yield weights
    zoo.unregister_model("test-padnet")


def test_ensure_plan_caches_and_redoes_it_for_other_weights(registered, tmp_path, monkeypatch):
    calls = []
    real = pipeline.analyze

    def counting(*args, **kwargs):
        calls.append(kwargs.get("weights"))
        kwargs["config"] = offline.SearchConfig(batch_size=40, min_samples=40)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "analyze", counting)
    first = offline.ensure_plan("test-padnet", weights=str(registered), limit=80)
    assert offline.default_plan_path("test-padnet").is_file()
    again = offline.ensure_plan("test-padnet", weights=str(registered), limit=80)
    assert len(calls) == 1 and again == first
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    torch.save(PadNet().state_dict(), other)
    with pytest.raises(PlanError, match="weights"):
        Plan.load(offline.default_plan_path("test-padnet"), model=zoo.load_model("test-padnet", weights=str(other)))
    redone = offline.ensure_plan("test-padnet", weights=str(other), limit=80)
    assert len(calls) == 2 and redone.weights_sha256 != first.weights_sha256


def test_profiles_round_trip_and_combine_into_a_plan(model, sample, tmp_path):
    x, y = sample
    cuts = partition.cuts(model, x[:1])
    device = offline.measure("device", model, cuts, x[:4], model_name="padnet", name="phone", codec_samples=2,
                                    min_seconds=0.05)
    cloud = offline.measure("cloud", model, cuts, x[:4], model_name="padnet", name="server", batch_sizes=(1, 2),
                                  codec_samples=2, min_seconds=0.05)
    for p in (device, cloud):
        assert offline.Profile.load(p.save(tmp_path / f"{p.role}.json")) == p
    assert device.cuts[0].head_ms == 0.0 and all(c.head_ms > 0 for c in device.cuts[1:])
    assert device.cuts[3].encode_ms["shuffle-lz4:4"] > 0 and device.cuts[3].bytes["fp32"] > 4 * cuts[3].numel
    assert cloud.cuts[-1].tail_ms == {1: 0.0, 2: 0.0} and cloud.cuts[0].tail_ms[2] > 0
    with pytest.raises(PlanError, match="cloud profile"):
        offline.Profile.load(tmp_path / "cloud.json", role="device")
    with pytest.raises(PlanError, match="do not match"):
        device.check_cuts(cuts[:-1])
    plan = offline.analyze(model, data=(x[:60], y[:60]), device_profile=tmp_path / "device.json",
                            cloud_profile=tmp_path / "cloud.json", config=offline.SearchConfig(batch_size=30),
                            bytes_samples=2)
    assert (plan.device_profile, plan.cloud_profile) == ("phone", "server")
    assert plan.cuts[2].device_ms == device.cuts[2].head_ms and plan.cuts[2].cloud_ms == cloud.cuts[2].tail_ms
    assert plan.cuts[2].option("shuffle-lz4", 4).encode_ms == device.cuts[2].encode_ms["shuffle-lz4:4"]
    assert plan.input_spec is None and not any(o.codec == "jpeg" for o in plan.cuts[0].options)


# ------------------------------------------------------------------------------------------- CLI


def test_plan_show_prints_the_table_and_writes_the_figure(plan, tmp_path, capsys):
    from dyno.cli import main

    path = plan.save(tmp_path / "p.json")
    png = tmp_path / "fig" / "p.png"
    assert main(["plan", "show", str(path), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "PadNet" in out and "bits ≤1pt" in out and "relu1" in out and "largest reduction" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert main(["plan", "show", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "PadNet" and len(data["cuts"]) == len(plan.cuts)
    keys = {"id", "name", "fp32_bytes", "min_bits_1pt", "bytes_at_min_bits_1pt", "device_ms", "cloud_ms"}
    assert all(set(c) == keys for c in data["cuts"])
    assert data["cuts"][-1]["min_bits_1pt"] is None and data["cuts"][-1]["bytes_at_min_bits_1pt"] is None
    first = data["cuts"][1]
    assert first["bytes_at_min_bits_1pt"] == plan.min_bits(1, 0.01).bytes


def test_plan_show_refuses_a_corrupt_plan(plan, tmp_path, capsys):
    from dyno.cli import main

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(plan.to_dict())[:-40])
    assert main(["plan", "show", str(path)]) == 1
    assert "corrupt or truncated" in capsys.readouterr().err


def test_imagenet_inputs_invert_to_the_8bit_images():
    try:
        data = zoo.load_dataset("imagenet-samples", model="efficientnet-lite0")
    except Exception as error:  # the 500 images live outside the repository
        pytest.skip(f"imagenet-samples not available here ({error})")
    from dyno.offline import sample as sample_module

    x, _, _ = offline.load_sample(data, sample_module._CHUNK + 3)  # two chunks of the check, the last ragged
    spec = offline.input_spec(zoo.get_model("efficientnet-lite0"), data)
    images, normalize, note = offline.input_images(x, spec)
    assert not note and len(images) == len(x)
    assert all(i.dtype == np.uint8 and i.shape == (224, 224, 3) and i.flags.c_contiguous for i in images)
    assert torch.equal(normalize(np.stack(images).astype(np.float32)), x)
    broken = x.clone()
    broken[-1, 0, 0, 0] += 0.01  # one value of the last chunk off the 8-bit grid
    assert offline.input_images(broken, spec)[0] is None


def test_load_sample_fills_one_tensor_and_refuses_mixed_shapes():
    items = [(torch.full((2, 3), float(i)), i % 3) for i in range(7)]
    x, y, index = offline.load_sample(items, 4)
    assert index == [0, 2, 4, 6] and x.is_contiguous() and x.dtype == torch.float32
    assert torch.equal(x, torch.stack([items[i][0] for i in index])) and y.tolist() == [0, 2, 1, 0]
    with pytest.raises(DataError, match="shape"):
        offline.load_sample(items + [(torch.zeros(3, 2), 0)], None)


# ------------------------------------------------------------------------------------ the search


@pytest.mark.parametrize("start", [1, 4, 8, 12, 16])
@pytest.mark.parametrize("knee", [1, 3, 6, 11, 16])
def test_the_knee_search_confirms_both_knees_on_the_whole_sample(start, knee):
    """A synthetic cut whose drop falls with bits (1-point knee at ``knee``, 0.5-point knee one bit
    higher): the search finds both wherever it starts, confirms them on every sample, and sees
    only part of the sample for widths far from the knees."""
    total, screen = 500, 100
    drops = {b: (0.3 if b < knee - 1 else 0.02 if b < knee else 0.008 if b == knee else 0.002) for b in range(1, 17)}
    config = offline.SearchConfig(batch_size=50, min_samples=50)
    measured = {}

    def evaluate(bits, until):
        m = measured.setdefault(bits, offline.Measurement(("q", bits)))
        until = total if until is None else until
        while m.n < until and not m.stopped:  # 50 samples per batch, drops exactly as in the table
            m.n += 50
            m.batches += 1
            m.diff = round(drops[bits] * m.n)
            m.changed = m.diff
            if m.n < total and m.n >= config.min_samples and m.drop - config.z * m.drop_se > 0.01:
                m.stopped = True
        return m

    found = offline.Search(packing.BITS, evaluate, screen, total).run(start)
    assert found == knee
    assert measured[knee].n == total and measured[knee].passes(0.01)
    if knee > 1:
        assert not measured[knee - 1].passes(0.01)
    half = min((b for b, m in measured.items() if m.passes(0.005)), default=None)
    if knee < 16:
        assert half == knee + 1 and measured[half].n == total
    else:
        assert half is None  # even 16 bits drop 0.8 points here
    assert sum(m.n for m in measured.values()) <= 6 * total + 16 * screen


def test_cuts_over_the_hold_budget_are_recomputed_with_the_very_same_result(model, sample):
    """Cuts whose activations for the whole sample exceed ``hold_bytes`` are recomputed per use from
    the last cut held: every measurement, clip range and share is the same as with all of them held."""
    x, y = sample
    cuts = partition.cuts(model, x[:1])
    config = offline.SearchConfig(batch_size=50, min_samples=100, fp16="all")
    names = [c.name for c in cuts]
    pad = names.index("pad")
    budget = len(x) * 12 * 16 * 16 * 4 - 1  # the padded 12 x 16 x 16 cut alone is over it
    runs = {b: offline.analyze_precision(model, cuts, x, y, config=config, channels_last=False, threads=1,
                                         hold_bytes=b) for b in (1 << 40, budget, 0)}
    assert "recomputed_cuts" not in runs[1 << 40].notes
    assert runs[budget].notes["recomputed_cuts"] == [pad]
    assert runs[0].notes["recomputed_cuts"] == list(range(len(cuts)))
    for run in runs.values():
        assert run.accuracy_fp32 == runs[1 << 40].accuracy_fp32
        assert [(c.measured, c.clip, c.calibration, c.shared_with, c.fp16_ok) for c in run.cuts] == \
            [(c.measured, c.clip, c.calibration, c.shared_with, c.fp16_ok) for c in runs[1 << 40].cuts]
    assert runs[budget].cuts[pad].shared_with == pad - 1

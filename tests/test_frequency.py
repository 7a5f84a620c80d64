"""analysis.frequency: FFT band masks partition the spectrum; variants are valid images."""
import numpy as np
import pytest
import torch
from torch import nn

from analysis.evaluation import Batches
from analysis.frequency import (background_only, band_pass, frequency, frequency_accuracy, radial_frequency,
                                variants)


def images(n=4, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_radial_frequency_matches_numpy():
    r = radial_frequency(8, 6).numpy()
    fy, fx = np.fft.fftfreq(8), np.fft.fftfreq(6)
    np.testing.assert_allclose(r, np.hypot(fy[:, None], fx[None, :]) * 2)
    assert r[0, 0] == 0 and r[4, 0] == 1.0  # DC and the vertical Nyquist bin


def test_bands_partition_the_image_and_hold_only_their_frequencies():
    x = images()
    low, mid, high = band_pass(x, 0, 0.3), band_pass(x, 0.3, 0.7), band_pass(x, 0.7, float("inf"))
    torch.testing.assert_close(low + mid + high, x.double())
    r = radial_frequency(32, 32)
    spectrum = torch.fft.fft2(mid).abs()
    assert spectrum[..., (r < 0.3) | (r >= 0.7)].max() < 1e-8
    assert spectrum[..., (r >= 0.3) & (r < 0.7)].max() > 1.0


def test_variants_are_uint8_and_keep_mean_colour():
    x = images()
    v = variants(x)
    assert list(v) == ["original", "low", "mid", "high", "background"]
    for name, img in v.items():
        assert img.dtype == torch.uint8 and img.shape == x.shape, name
    mean = x.double().mean(dim=(2, 3))
    for name in ("low", "mid", "high"):
        assert (v[name].double().mean(dim=(2, 3)) - mean).abs().max() < 3, name  # DC kept (up to clipping)
    with pytest.raises(ValueError, match="cutoffs"):
        variants(x, cutoffs=(0.5, 0.2))


def test_background_only_blanks_the_centre_box():
    x = images(2)
    bg = background_only(x, box=0.5)
    assert torch.equal(bg[..., :8, :], x[..., :8, :]) and torch.equal(bg[..., :, 24:], x[..., :, 24:])
    centre = bg[..., 8:24, 8:24]
    assert (centre == centre[..., :1, :1]).all()  # one colour per image and channel


def test_frequency_accuracy_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
    rows = frequency_accuracy(model, images(10), torch.arange(10) % 4, lambda u: u.float() / 255, batch_size=4)
    assert [r["variant"] for r in rows] == ["original", "low", "mid", "high", "background"]
    assert all(0 <= r["accuracy"] <= 1 and np.isfinite(r["loss"]) for r in rows)


def test_frequency_rows_per_checkpoint():
    from harness.models import build

    spec = {"name": "vgg11", "bn": True, "width": 0.125, "num_classes": 4}
    torch.manual_seed(0)
    ckpts = {f"t/{i}": {"model": build(spec).state_dict(), "model_spec": spec} for i in range(2)}
    test = Batches(images(6), torch.arange(6) % 4, 4, lambda u: u.float() / 255)
    df = frequency(ckpts, test, box=0.25)
    assert df.ckpt.tolist() == ["t/0"] * 5 + ["t/1"] * 5
    model = build(spec)
    model.load_state_dict(ckpts["t/1"]["model"])
    expected = frequency_accuracy(model.eval(), test.inputs, test.labels, test.transform, 4, box=0.25)
    assert df[df.ckpt == "t/1"].drop(columns="ckpt").to_dict("records") == expected

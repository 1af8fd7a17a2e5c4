"""Tests for probelib.metrics: hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from probelib.metrics import (accuracy, classification_metrics, confidences, expected_calibration_error,
                              mean_confidence, predict, rms_calibration_error)


def two_class_logits(conf, pred):
    """Logits whose max-softmax is ``conf`` and argmax ``pred`` (0/1)."""
    conf = np.asarray(conf, dtype=np.float64)
    z = np.log(conf / (1 - conf))
    logits = np.zeros((len(conf), 2))
    logits[np.arange(len(conf)), np.asarray(pred)] = z
    return torch.tensor(logits)


def test_accuracy_and_confidence_hand_case():
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([1, 1, 0])
    assert accuracy(logits, labels) == pytest.approx(2 / 3)
    assert accuracy(torch.tensor([1, 0, 0]), labels) == pytest.approx(2 / 3)
    expected = (0.75 + math.exp(2) / (1 + math.exp(2)) + 0.5) / 3
    assert mean_confidence(logits) == pytest.approx(expected)
    with pytest.raises(ValueError, match="differ in length"):
        accuracy(logits, labels[:2])


def test_rms_calibration_error_equal_mass_bins_last_takes_remainder():
    conf = [0.9, 0.6, 0.95, 0.7, 0.8]
    pred = [1, 0, 1, 1, 0]
    labels = [1, 1, 0, 1, 0]          # correct: T F F T T
    logits = two_class_logits(conf, pred)
    # sorted by confidence: .6(F) .7(T) | .8(T) .9(T) .95(F) -> bins of 2, last takes the rest
    gap1 = (0.6 + 0.7) / 2 - 0.5
    gap2 = (0.8 + 0.9 + 0.95) / 3 - 2 / 3
    expected = math.sqrt(2 / 5 * gap1 ** 2 + 3 / 5 * gap2 ** 2)
    assert rms_calibration_error(logits, labels, bin_size=2) == pytest.approx(expected, rel=1e-9)
    # fewer examples than a bin: one bin
    one = abs(np.mean(conf) - 3 / 5)
    assert rms_calibration_error(logits, labels, bin_size=100) == pytest.approx(one, rel=1e-9)
    with pytest.raises(ValueError, match="bin_size"):
        rms_calibration_error(logits, labels, bin_size=0)


def test_rms_calibration_error_default_bins_of_100_against_direct_loop():
    rng = np.random.default_rng(0)
    n = 257
    conf = rng.uniform(0.51, 0.99, n)
    pred = rng.integers(0, 2, n)
    labels = np.where(rng.uniform(size=n) < conf, pred, 1 - pred)
    got = rms_calibration_error(two_class_logits(conf, pred), labels)
    order = np.argsort(conf)
    c, k = conf[order], (pred == labels)[order]
    bins = [(0, 100), (100, 257)]
    direct = math.sqrt(sum((e - s) / n * (c[s:e].mean() - k[s:e].mean()) ** 2 for s, e in bins))
    assert got == pytest.approx(direct, rel=1e-9)


def test_ece_15_bins_hand_case():
    conf = [0.55, 0.58, 0.97, 0.99]
    pred = [0, 0, 1, 1]
    labels = [0, 1, 1, 1]
    # bins of width 1/15: .55 and .58 share bin (0.5333, 0.6]; .97 and .99 share (0.9333, 1]
    expected = 0.5 * abs(0.565 - 0.5) + 0.5 * abs(0.98 - 1.0)
    assert expected_calibration_error(two_class_logits(conf, pred), labels) == pytest.approx(expected, rel=1e-9)
    m = classification_metrics(two_class_logits(conf, pred), labels)
    assert set(m) == {"accuracy", "confidence", "rms_calibration", "ece"}
    assert m["accuracy"] == pytest.approx(0.75)


def test_predict_matches_direct_forward_and_restores_flags():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(3 * 6 * 6, 4))
    model.train()
    x = torch.rand(11, 1, 8, 8)
    logits = predict(model, x, batch_size=4, desc=None)
    assert all(m.training for m in model.modules())
    model.eval()
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-6)
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.allclose(predict(model, u8, desc=None), predict(model, u8.float() / 255, desc=None))
    assert confidences(logits).shape == (11,)


def _hendrycks_calib_err(confidence, correct, beta=100):
    """Burns & Steinhardt's (= Hendrycks et al.'s) ``calib_err`` with p='2', transcribed."""
    idxs = np.argsort(confidence)
    confidence, correct = confidence[idxs], correct[idxs]
    bins = [[i * beta, (i + 1) * beta] for i in range(len(confidence) // beta)]
    bins[-1] = [bins[-1][0], len(confidence)]
    cerr, total = 0.0, len(confidence)
    for i in range(len(bins) - 1):  # the last bin is never visited
        bc, bk = confidence[bins[i][0]:bins[i][1]], correct[bins[i][0]:bins[i][1]]
        if len(bc) > 0:
            cerr += len(bc) / total * np.square(np.abs(np.nanmean(bc) - np.nanmean(bk)))
    return np.sqrt(cerr)


@pytest.mark.parametrize("n", [257, 560, 1000])
def test_rms_calibration_burns_variant_is_the_authors_calib_err(n):
    rng = np.random.default_rng(n)
    conf = rng.uniform(0.51, 0.99, n)
    pred = rng.integers(0, 2, n)
    labels = np.where(rng.uniform(size=n) < conf - 0.1, pred, 1 - pred)
    logits = two_class_logits(conf, pred)
    burns = rms_calibration_error(logits, labels, variant="burns")
    assert burns == pytest.approx(_hendrycks_calib_err(conf, (pred == labels).astype(float)), rel=1e-9)
    complete = rms_calibration_error(logits, labels)
    assert complete == pytest.approx(rms_calibration_error(logits, labels, variant="complete"), rel=1e-12)
    assert burns < complete                           # the skipped last bin only ever removes a term
    m = classification_metrics(logits, labels, calibration="burns")
    assert m["rms_calibration"] == pytest.approx(burns, rel=1e-12)
    with pytest.raises(ValueError, match="variant"):
        rms_calibration_error(logits, labels, variant="hendrycks2")


def test_predict_device_none_uses_the_models_device(monkeypatch):
    """device=None: the model's own device (a CPU model stays on the CPU); a model without
    parameters or buffers follows the automatic rule (PROBELIB_DEVICE, else CUDA when present)."""
    monkeypatch.setenv("PROBELIB_DEVICE", "meta")   # consulting the automatic rule would raise
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(6, 1, 4, 4)
    logits = predict(model, x, desc=None)
    assert next(model.parameters()).device == torch.device("cpu")
    assert torch.equal(logits, predict(model, x, device="cpu", desc=None))   # same process, same op
    with pytest.raises(ValueError, match="PROBELIB_DEVICE|not supported"):
        predict(nn.Flatten(), x, desc=None)                 # parameterless: the automatic rule
    monkeypatch.setenv("PROBELIB_DEVICE", "cpu")
    assert torch.equal(predict(nn.Flatten(), x, desc=None), x.flatten(1))

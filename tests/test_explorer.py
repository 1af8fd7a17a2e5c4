"""The severity explorer (probelib.explorer, probelib.explorer_app): its numbers, its figures and its page's behaviour."""

from __future__ import annotations

import math

import pytest

def test_explore_setting_bn_model_adabn_arms():
    import numpy as np

    from probelib.data import as_tensors, load_dataset
    from probelib.neighbours import brute_force_knn
    from probelib.explorer import explore_setting, explorer_config, plot_setting

    source = explore_setting("mnist5k", "bn_wrn", "gaussian_noise", 5, adabn=False, smoke=True, n_show=8)
    adapted = explore_setting("mnist5k", "bn_wrn", "gaussian_noise", 5, adabn=True, smoke=True, n_show=8)
    assert source["n"] == 64 and len(source["confidences"]) == 64 and tuple(source["images"].shape) == (8, 1, 28, 28)
    assert source["accuracy"] == source["accuracy_source"] == float(np.mean(source["correct"]))
    assert adapted["adabn"] and adapted["accuracy"] == adapted["accuracy_adabn"] == float(np.mean(adapted["correct"]))
    assert source["adabn_gain"] == adapted["adabn_gain"] == adapted["accuracy_adabn"] - adapted["accuracy_source"]
    # the first call also adapted a copy: the cached source model must be untouched
    assert adapted["accuracy_source"] == source["accuracy_source"]
    assert 0 <= source["confidence"] <= 1 and np.all((source["confidences"] > 0) & (source["confidences"] <= 1))
    # NCG against an independent float64 brute-force 1-NN over the training split the model saw
    from probelib.explorer import _corrupted_test  # the same corrupted images

    cfg = explorer_config("mnist5k", "bn_wrn", smoke=True)
    mnist5k = load_dataset(cfg.dataset)
    train_x, train_y = as_tensors(cfg.prepare(mnist5k).train)
    x, y = _corrupted_test(mnist5k, "gaussian_noise", 5, 64, 0)
    _, idx = brute_force_knn(train_x, x, k=1)
    nn_labels = train_y.numpy()[idx[:, 0]]
    assert np.array_equal(y.numpy(), source["labels"])
    assert adapted["ncg"] == float(np.mean(adapted["predictions"] == nn_labels))
    assert len(plot_setting(adapted, n_cols=4).axes) == 8 + 2


def test_explore_setting_without_batch_norm_and_bad_choices():
    from probelib.explorer import explore_setting

    r = explore_setting("mnist5k", "natural", "contrast", 2, adabn=True, smoke=True, n_show=4)
    assert not r["adabn"] and math.isnan(r["adabn_gain"]) and "no BatchNorm" in r["note"]
    assert list(r["summary"].columns)[:4] == ["dataset", "model", "corruption", "severity"]
    assert r["class_names"][:3] == ["0", "1", "2"]
    with pytest.raises(ValueError, match="unknown explorer model 'trade'.*'trades'"):
        explore_setting(model="trade", smoke=True)
    with pytest.raises(ValueError, match="unknown corruption"):
        explore_setting(corruption="gausian_noise", smoke=True)
    with pytest.raises(ValueError, match="severity must be an integer in 1..5"):
        explore_setting(severity=6, smoke=True)


def test_bn_wrn_obeys_the_dataset_control():
    from probelib.explorer import explorer_config

    assert explorer_config("mnist5kwo9", "bn_wrn", smoke=True).dataset == "mnist5kwo9"
    assert explorer_config("mnist5k", "bn_wrn").dataset == "mnist5k"
    with pytest.raises(ValueError, match="eps .* must be a positive number, got -1"):
        explorer_config("mnist5k", "natural", eps=-1)


# ---------------------------------------------------------------------------- the page, on fake numbers

def _fake_result(dataset, model, corruption, severity, adabn, **options):
    """What explore_setting returns, without training: accuracy grows with -severity."""
    import numpy as np
    import torch

    if options.get("eps", 2.0) <= 0:
        raise ValueError("eps (the TRADES/AT L2 radius) must be a positive number, got -1")
    n, n_show = 20, options.get("n_show", 16)
    labels = np.arange(n) % 10
    predictions = np.where(np.arange(n) < 20 - 3 * severity, labels, (labels + 1) % 10)
    correct = predictions == labels
    has_bn = model == "bn_wrn"
    result = {"dataset": dataset, "model": model, "arch": "X", "corruption": corruption, "severity": severity,
              "adabn": bool(adabn and has_bn), "n": n, "accuracy": float(correct.mean()), "confidence": 0.7,
              "ncg": 0.4, "clean_accuracy": 0.9, "accuracy_source": float(correct.mean()),
              "accuracy_adabn": 0.5 if has_bn else float("nan"),
              "adabn_gain": 0.5 - float(correct.mean()) if has_bn else float("nan"),
              "confidences": np.full(n, 0.7), "correct": correct, "predictions": predictions, "labels": labels,
              "nn_labels": labels, "shown": np.linspace(0, n - 1, n_show).round().astype(int), "images": torch.rand(n_show, 1, 28, 28),
              "class_names": [str(i) for i in range(10)], "note": ""}
    options.get("stage", lambda s: None)("scoring")
    return result


@pytest.fixture
def fake_explorer(monkeypatch):
    import probelib.explorer_app as E

    calls = []

    def fake(dataset, model, corruption, severity, adabn, **options):
        calls.append((dataset, model, corruption, severity, adabn))
        return _fake_result(dataset, model, corruption, severity, adabn, **options)

    monkeypatch.setattr(E, "explore_setting", fake)
    return calls


def test_page_updates_once_per_change_and_disables_what_cannot_apply(fake_explorer):
    from probelib.explorer_app import Explorer

    app = Explorer("mnist5kwo9", "natural", smoke=True, debounce_s=0)  # no event loop: updates at once
    assert app.show()["severity"] == 3 and app.updates == 1
    assert app.controls["adabn"].disabled and "no batch norm" in app.reasons["adabn"].value
    app.controls["severity"].value = 5
    assert app.updates == 2 and "severity 5" in app.summary.value and "severity 5" in app.status.value
    assert "<th>setting</th>" in app.summary.value and app.summary.value.count("<th>") == 7
    assert app.figure.value[:4] == b"\x89PNG" and "severity 5" in app.caption.value
    app.controls["model"].value = "bn_wrn"
    assert not app.controls["adabn"].disabled and app.reasons["adabn"].value == ""
    app.controls["adabn"].value = True
    assert app.result["adabn"] and "· AdaBN" in app.summary.value
    app.controls["compare"].value = "trades"  # natural vs TRADES: the model control is fixed
    assert app.controls["model"].disabled and "fixes the models" in app.reasons["model"].value
    assert [r["model"] for r in app.results] == ["natural", "trades"] and app.summary.value.count("<tr>") == 2  # two body rows
    assert app.controls["adabn"].disabled  # neither CNN has batch norm
    app.controls["compare"].value = "adabn"  # the model (bn_wrn) has batch norm: both arms, same setting
    assert [r["adabn"] for r in app.results] == [False, True] and app.error.value == ""
    assert app.controls["adabn"].disabled and "shows both" in app.reasons["adabn"].value
    assert fake_explorer[-2:] == [("mnist5kwo9", "bn_wrn", "gaussian_noise", 5, False),
                                  ("mnist5kwo9", "bn_wrn", "gaussian_noise", 5, True)]
    app.controls["model"].value = "natural"
    assert "cannot apply" in app.reasons["compare"].value and "no batch norm" in app.error.value
    assert app.results == [] and app.summary.value == ""  # no stale result readable as the live one
    assert app.figure.value == b"" and app.figure.layout.display == "none" and app.caption.value == ""


def test_page_debounces_a_run_of_changes(fake_explorer):
    import asyncio

    from probelib.explorer_app import Explorer

    app = Explorer("mnist5k", "natural", smoke=True, debounce_s=0.2)

    async def steps():
        for s in (1, 2, 3, 4, 5, 4):
            app.controls["severity"].value = s
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)

    asyncio.run(steps())
    assert app.updates == 1 and fake_explorer == [("mnist5k", "natural", "gaussian_noise", 4, False)]


def test_page_shows_an_error_and_the_first_render_raises_it(fake_explorer):
    from probelib.explorer_app import Explorer

    app = Explorer("mnist5k", "natural", eps=-1, smoke=True, debounce_s=0)
    with pytest.raises(ValueError, match="eps .*positive number"):
        app.show()
    assert "ValueError: eps" in app.error.value and app.result is None and app.failures == 1
    app.controls["severity"].value = 4  # a later change shows the error without raising
    assert app.failures == 2 and "positive number" in app.error.value


def test_figures_are_not_pyplot_figures_and_mark_right_and_wrong():
    import matplotlib.pyplot as plt

    from probelib.explorer import plot_compare, plot_setting

    before = plt.get_fignums()
    r = _fake_result("mnist5k", "bn_wrn", "fog", 2, True, n_show=8)
    fig = plot_setting(r)
    titles = [ax.get_title() for ax in fig.axes[:8]]
    assert plt.get_fignums() == before  # the inline backend never sees (shows, closes) it
    assert titles[0] == "✓ 0" and titles[-1] == "✗ 0 (true 9)"
    both = plot_compare(r, _fake_result("mnist5k", "bn_wrn", "fog", 2, False, n_show=8))
    assert len(both.axes) == 8 + 8 + 2 + 1 and plt.get_fignums() == before
    assert fig.get_size_inches()[0] >= 12

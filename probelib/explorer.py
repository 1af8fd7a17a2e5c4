"""The severity explorer (notebook 40, ``python -m probelib explore``): what it computes and draws.

:func:`explore_setting` scores one setting (dataset, model, corruption, severity, AdaBN on/off);
:func:`plot_setting` and :func:`plot_compare` draw one or two settings; :func:`summary_table` is
the few columns a person reads. :class:`Explorer` is the interactive page: the controls, a
progress area, a readable error line, the summary and exactly one figure per update, built
from a figure that pyplot never sees (so the inline backend cannot show, close or duplicate it).
"""

from __future__ import annotations

import html
import io
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from probelib._util import unknown_name

__all__ = ["EXPLORER_MODELS", "EXPLORER_SMOKE", "COMPARE_MODES", "explorer_config", "adabn_unavailable",
           "explore_setting", "setting_label", "summary_table", "plot_setting", "plot_compare",
           "initial_state_name", "initial_state_verdict", "Explorer",
           "explorer_notebook", "start_explorer", "stop_explorer", "add_cli"]

EXPLORER_MODELS = ("natural", "trades", "at", "bn_wrn")
# Smoke-size training: small enough for a test, large enough to beat chance on the embedded digits.
EXPLORER_SMOKE = {"epochs": 2, "max_train": 600, "max_test": 100, "optimizer": "adam", "lr": 1e-3,
                  "batch_size": 32, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
SMOKE_IMAGES = 64
COMPARE_MODES = {"off": "one setting", "adabn": "source vs AdaBN", "trades": "natural vs TRADES"}
_CACHE: dict[tuple, Any] = {}


def explorer_config(dataset: str, model: str, eps: float = 2.0, smoke: bool = False):
    """The :class:`~probelib.training.TrainConfig` behind an explorer model choice on ``dataset``.

    ``natural``/``trades``/``at``: the NCG paper's pixel-space settings (as notebook 20 trains
    them); ``bn_wrn``: Burns & Steinhardt's BN WideResNet for the dataset's family, trained on
    ``dataset`` itself (a ``…woK`` name holds class K out, as for the other models).
    ``smoke`` shrinks training to :data:`EXPLORER_SMOKE`.
    """
    from probelib.training import default_config

    if model not in EXPLORER_MODELS:
        raise unknown_name("explorer model", model, EXPLORER_MODELS)
    if model == "bn_wrn":
        cfg = default_config(dataset, paper="adabn")
    else:
        if eps is None or not math.isfinite(float(eps)) or float(eps) <= 0:
            raise ValueError(f"eps (the TRADES/AT L2 radius) must be a positive number, got {eps!r}")
        cfg = default_config(dataset, method=model, eps=None if model == "natural" else float(eps))
    return cfg.replace(**EXPLORER_SMOKE) if smoke else cfg


def _cached(key: tuple, compute: Callable[[], Any], keep: int = 12) -> Any:
    if key not in _CACHE:
        while len(_CACHE) >= keep:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = compute()
    return _CACHE[key]


def _dataset(name: str):
    from probelib.data import data_fingerprint, load_dataset

    return _cached(("dataset", name, data_fingerprint(name)), lambda: load_dataset(name))


def adabn_unavailable(dataset: str, model: str, eps: float = 2.0) -> str | None:
    """Why AdaBN cannot apply to ``model`` on ``dataset`` (a sentence), or None when it can."""
    from probelib.adabn import bn_layers

    cfg = explorer_config(dataset, model, eps)
    has_bn = _cached(("has_bn", cfg.arch, cfg.model_kwargs, cfg.dataset),
                     lambda: bool(bn_layers(cfg.build(_dataset(cfg.dataset)))))
    return None if has_bn else f"{model} ({cfg.arch}) has no batch norm, so AdaBN has nothing to re-estimate"


def _spread(total: int, n: int | None):
    """Indices of ``n`` images spread evenly over ``total`` (test splits are often sorted by class)."""
    import torch

    if n is None or n >= total:
        return torch.arange(total)
    return torch.linspace(0, total - 1, n).round().long()


def _corrupted_test(splits, corruption: str, severity: int, n_images: int | None, seed: int):
    """Corrupted test images (``n_images`` spread evenly over the split) in the model's label space.

    Embedded families are corrupted on the fly (:func:`probelib.corruptions.corrupt`, seeded by
    the position in the subset); others read the published ``<family>-c`` set.
    """
    import torch

    from probelib import corruptions as C
    from probelib.data import apply_label_map, as_tensors, held_out_label_map, parse_name

    base, held_out = parse_name(splits.name) if getattr(splits, "name", None) else (None, None)
    published = f"{base}-c" if base else None
    if published in C.corrupted_sets() and published != "mnist5k-c":
        x, y = as_tensors(C.load_corrupted(published, corruption, severity))
        if held_out is not None:
            x, y = apply_label_map(x, y, held_out_label_map(base, splits.num_classes + 1, held_out))
        pick = _spread(len(y), n_images)
        return x[pick], y[pick]
    x, y = as_tensors(splits.test)
    pick = _spread(len(y), n_images)
    x, y = x[pick], y[pick]
    u8 = C.to_uint8_images(x)
    out = C.corrupt(u8, corruption, int(severity), seed).reshape(u8.shape)
    return torch.from_numpy(out.copy()).permute(0, 3, 1, 2).float().div_(255), y


def _say(stage: Callable[[str], None] | None, text: str) -> None:
    if stage is not None:
        stage(text)


def explore_setting(dataset: str = "mnist5k", model: str = "natural", corruption: str = "gaussian_noise",
                    severity: int = 3, adabn: bool = False, *, eps: float = 2.0, n_images: int | None = 1000,
                    n_show: int = 16, smoke: bool = False, device=None, seed: int = 0, progress: bool = False,
                    stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Everything the severity explorer shows for one setting, computed with probelib.

    Trains (or loads from the store) the model :func:`explorer_config` names, corrupts
    ``n_images`` test images (spread evenly over the split; None = all; 64 with ``smoke``) with
    ``corruption`` at ``severity`` (1..5), and scores them with the source model and, when the
    model has BatchNorm layers, with AdaBN (statistics re-estimated on these corrupted images,
    exact population statistics). ``adabn`` picks which of the two the displayed predictions,
    accuracy, confidences and NCG come from; ``adabn_gain`` is always AdaBN accuracy − source
    accuracy (NaN for a model without BatchNorm). NCG = fraction of images predicted as the label
    of their nearest clean training image (pixel L2; the reference is the training split the
    model saw). ``progress`` shows tqdm bars (training epochs, scoring batches); ``stage`` is
    called with a sentence before each step.

    Returns a dict: ``summary`` (one-row DataFrame of every scalar), the scalars ``accuracy``,
    ``confidence``, ``ncg``, ``clean_accuracy``, ``accuracy_source``, ``accuracy_adabn``,
    ``adabn_gain``, ``n``; arrays over all images ``confidences``, ``correct``, ``predictions``,
    ``labels``, ``nn_labels``; ``images`` (``n_show`` corrupted images spread over the set,
    N×C×H×W), ``shown`` (their indices into the arrays), ``class_names``; ``note``.
    """
    import numpy as np
    import torch

    from probelib import corruptions as C
    from probelib._util import check_choice, default_device
    from probelib.adabn import AdaBNSettings, adapt_bn, bn_layers
    from probelib.data import as_tensors, data_fingerprint
    from probelib.metrics import accuracy, confidences, predict
    from probelib.ncg import ncg
    from probelib.neighbours import nearest_neighbours
    from probelib.store import default_store
    from probelib.training import checkpoint_key, train_or_load

    check_choice("corruption", corruption, C.corruption_names(extra=True))
    if isinstance(severity, bool) or int(severity) != severity or not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    if n_images is not None and (int(n_images) != n_images or n_images < 1):
        raise ValueError(f"n_images must be a positive integer or None (all test images), got {n_images!r}")
    if int(n_show) != n_show or n_show < 0:
        raise ValueError(f"n_show must be an integer >= 0, got {n_show!r}")
    severity = int(severity)
    if smoke:
        n_images = SMOKE_IMAGES if n_images is None else min(int(n_images), SMOKE_IMAGES)
    cfg = explorer_config(dataset, model, eps, smoke)
    dev = default_device(device)
    store = default_store()
    key = checkpoint_key(cfg)  # config and data content: replaced data files are never served stale
    stored = store.verify(store.path("checkpoints", cfg.name, key, ".pt"))
    if ("model", key, str(dev)) not in _CACHE:
        _say(stage, f"loading {model} for {cfg.dataset} from the store" if stored else
             f"training {model} ({cfg.arch}, {cfg.epochs} epochs) on {cfg.dataset}: first use of this model, "
             f"later uses load it from {store.root}")
    net = _cached(("model", key, str(dev)), lambda: train_or_load(cfg, device=dev, progress=progress)[0])
    net.eval()
    full = _dataset(cfg.dataset)
    splits = _cached(("splits", key), lambda: cfg.prepare(full))
    _say(stage, f"corrupting {n_images or 'all'} test images ({corruption}, severity {severity})")
    x, y = _cached(("corrupted", cfg.dataset, data_fingerprint(cfg.dataset), corruption, severity, n_images, seed),
                   lambda: _corrupted_test(full, corruption, severity, n_images, seed))
    clean_x, clean_y = as_tensors(full.test)
    pick = _spread(len(clean_y), n_images)
    clean_x, clean_y = clean_x[pick], clean_y[pick]

    desc = (lambda d: d) if progress else (lambda d: None)
    _say(stage, f"scoring {len(y)} images with the source model")
    logits_source = predict(net, x, device=dev, desc=desc("score source"))
    acc_source = accuracy(logits_source, y)
    has_bn = bool(bn_layers(net))
    note = ""
    if has_bn:
        _say(stage, "re-estimating batch-norm statistics (AdaBN) and scoring again")
        ada = adapt_bn(net, x, AdaBNSettings(batch_size=256, device=dev))
        logits_adabn = predict(ada, x, device=dev, desc=desc("score AdaBN"))
        acc_adabn = accuracy(logits_adabn, y)
    else:
        logits_adabn, acc_adabn = None, float("nan")
        note = f"{cfg.arch} has no BatchNorm layers: AdaBN does not apply (showing the source model)"
    logits = logits_adabn if (adabn and has_bn) else logits_source

    _say(stage, "finding each image's nearest clean training image (NCG)")
    train_x, train_y = as_tensors(splits.train)
    nn_labels = nearest_neighbours(train_x, train_y, x, name=f"explorer-{cfg.dataset}-{corruption}{severity}",
                                   progress=progress).labels[:, 0]
    pred = logits.argmax(dim=1).numpy()
    conf = confidences(logits)
    shown = _spread(len(y), n_show) if n_show else torch.zeros(0, dtype=torch.long)
    labels = y.numpy()
    class_names = [str(c) for c in getattr(splits, "class_names", None) or full.class_names]
    result = {
        "dataset": cfg.dataset, "model": model, "arch": cfg.arch, "corruption": corruption,
        "severity": severity, "adabn": bool(adabn and has_bn), "n": len(labels),
        "accuracy": accuracy(logits, y), "confidence": float(conf.mean()), "ncg": ncg(pred, nn_labels),
        "clean_accuracy": accuracy(predict(net, clean_x, device=dev, desc=None), clean_y),
        "accuracy_source": acc_source, "accuracy_adabn": acc_adabn, "adabn_gain": acc_adabn - acc_source,
        "confidences": conf, "correct": pred == labels, "predictions": pred, "labels": labels,
        "nn_labels": np.asarray(nn_labels), "shown": shown.numpy(), "images": x[shown],
        "class_names": class_names, "note": note,
    }
    keys = ["dataset", "model", "corruption", "severity", "adabn", "n", "clean_accuracy", "accuracy",
            "confidence", "ncg", "accuracy_source", "accuracy_adabn", "adabn_gain"]
    result["summary"] = pd.DataFrame([{k: result[k] for k in keys}])
    return result


# --------------------------------------------------------------------------- what a person reads

def setting_label(result: Mapping[str, Any]) -> str:
    """One line naming a result's setting: ``mnist5kwo9 · natural · gaussian_noise · severity 3 · source``."""
    arm = "AdaBN" if result["adabn"] else "source"
    return f"{result['dataset']} · {result['model']} · {result['corruption']} · severity {result['severity']} · {arm}"


def summary_table(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The few columns a person reads, one row per result: setting, accuracy (corrupted and clean),
    NCG, mean confidence, AdaBN gain (n/a without batch norm), images scored."""
    rows = []
    for r in results:
        gain = r["adabn_gain"]
        rows.append({"setting": setting_label(r), "accuracy": f"{r['accuracy']:.3f}",
                     "clean accuracy": f"{r['clean_accuracy']:.3f}", "NCG": f"{r['ncg']:.3f}",
                     "mean confidence": f"{r['confidence']:.3f}",
                     "AdaBN gain": "n/a" if not math.isfinite(gain) else f"{gain:+.3f}", "images": r["n"]})
    return pd.DataFrame(rows)


def _label(result: Mapping[str, Any], k: int) -> str:
    names = result.get("class_names") or []
    return str(names[k]) if 0 <= k < len(names) else str(k)


def _sample_grid(fig, spec, result: Mapping[str, Any], n_cols: int) -> None:
    """The corrupted sample images: ``✓ pred`` (green) when right, ``✗ pred (true)`` (red) when wrong."""
    images = result["images"]
    rows = max(1, -(-len(images) // n_cols))
    grid = spec.subgridspec(rows, n_cols, hspace=0.45, wspace=0.1)
    for i in range(len(images)):
        ax = fig.add_subplot(grid[i // n_cols, i % n_cols])
        img = images[i].permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        j = int(result["shown"][i])
        pred, true = _label(result, int(result["predictions"][j])), _label(result, int(result["labels"][j]))
        ok = bool(result["correct"][j])
        ax.set_title(f"✓ {pred}" if ok else f"✗ {pred} (true {true})", fontsize=11,
                     color="tab:green" if ok else "tab:red", fontweight="bold" if ok else "normal")
        ax.axis("off")


def _metrics(ax, results: Sequence[Mapping[str, Any]], names: Sequence[str]) -> None:
    import numpy as np

    metrics = ["clean accuracy", "accuracy", "NCG", "AdaBN gain"]
    keys = ["clean_accuracy", "accuracy", "ncg", "adabn_gain"]
    height = 0.8 / len(results)
    colours = ["tab:blue", "tab:orange"]
    low = -0.1
    for k, (r, name) in enumerate(zip(results, names)):
        values = [r[key] for key in keys]
        bars = [v if math.isfinite(v) else 0.0 for v in values]
        low = min(low, min(bars) - 0.05)
        pos = np.arange(len(metrics)) + (k - (len(results) - 1) / 2) * height
        ax.barh(pos, bars, height=height * 0.95, color=colours[k % 2] if len(results) > 1 else
                ["0.6", "tab:blue", "tab:orange", "tab:purple"], label=name)
        for i, (p, v, b) in enumerate(zip(pos, values, bars)):
            text = "n/a" if not math.isfinite(v) else f"{v:+.3f}" if keys[i] == "adabn_gain" else f"{v:.3f}"
            ax.text(max(b, 0) + 0.01, p, text, va="center", fontsize=10)
    ax.set_yticks(np.arange(len(metrics)), metrics, fontsize=10)
    ax.invert_yaxis()
    ax.set_xlim(low, 1.2)
    ax.axvline(0, color="k", lw=0.5)
    if len(results) > 1:
        ax.legend(fontsize=9, loc="lower right")


def _confidence_hist(ax, result: Mapping[str, Any]) -> None:
    import numpy as np

    conf, correct = np.asarray(result["confidences"]), np.asarray(result["correct"], dtype=bool)
    ax.hist([conf[correct], conf[~correct]], bins=np.linspace(0, 1, 21), stacked=True,
            label=["✓ right", "✗ wrong"], color=["tab:green", "tab:red"], hatch=None)
    ax.set_xlabel("max-softmax confidence", fontsize=10)
    ax.set_ylabel("images", fontsize=10)
    ax.legend(fontsize=9)


def _new_figure(width: float, height: float):
    """A figure that pyplot does not track (never shown or closed behind the explorer's back)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=None)


def plot_setting(result: Mapping[str, Any], n_cols: int = 8):
    """Figure of one :func:`explore_setting` result: the sample grid (✓/✗ and colour) above the
    confidence histogram (right vs wrong) and the accuracy / NCG / AdaBN-gain panel."""
    n_show = len(result["images"])
    rows = max(1, -(-n_show // n_cols))
    fig = _new_figure(1.6 * n_cols, 1.75 * rows + 3.4)
    outer = fig.add_gridspec(2, 2, height_ratios=[1.75 * rows, 3.0], hspace=0.3, wspace=0.35)
    _sample_grid(fig, outer[0, :], result, n_cols)
    _confidence_hist(fig.add_subplot(outer[1, 0]), result)
    _metrics(fig.add_subplot(outer[1, 1]), [result], ["this setting"])
    note = f"\n{result['note']}" if result["note"] else ""
    fig.suptitle(f"{setting_label(result)} · n={result['n']}{note}", fontsize=12)
    return fig


def plot_compare(first: Mapping[str, Any], second: Mapping[str, Any], n_cols: int = 4):
    """Two settings side by side (the same images): each one's sample grid and confidence
    histogram, and one panel of both settings' accuracy / NCG / AdaBN gain."""
    results = [first, second]
    n_show = max(len(r["images"]) for r in results)
    rows = max(1, -(-n_show // n_cols))
    fig = _new_figure(1.6 * 2 * n_cols + 0.8, 1.75 * rows + 6.2)
    outer = fig.add_gridspec(3, 2, height_ratios=[1.75 * rows, 2.6, 2.6], hspace=0.45, wspace=0.25)
    for k, r in enumerate(results):
        _sample_grid(fig, outer[0, k], r, n_cols)
        ax = fig.add_subplot(outer[1, k])
        _confidence_hist(ax, r)
        ax.set_title(setting_label(r), fontsize=11)
    _metrics(fig.add_subplot(outer[2, :]), results, [setting_label(r) for r in results])
    fig.suptitle(f"{setting_label(first)}   vs   {setting_label(second)}", fontsize=12)
    return fig


def initial_state_name(result: Mapping[str, Any]) -> str:
    """File name of a result's saved table and figure, e.g. ``explorer_mnist5kwo9_natural_gaussian_noise3``."""
    return f"explorer_{result['dataset']}_{result['model']}_{result['corruption']}{result['severity']}"


def initial_state_verdict(result: Mapping[str, Any]) -> str:
    """The verdict line notebook 40 prints for its initial state."""
    gain = result["adabn_gain"]
    return (f"explorer initial state ({result['model']}, {result['corruption']} s{result['severity']}): "
            f"accuracy {result['accuracy']:.3f} (clean {result['clean_accuracy']:.3f}), NCG {result['ncg']:.3f}, "
            f"AdaBN gain {'n/a (no batch norm)' if not math.isfinite(gain) else f'{gain:+.3f}'}")


# --------------------------------------------------------------------------- the interactive page

@contextmanager
def _bars_into(box) -> Iterator[None]:
    """While the block runs, notebook tqdm bars (``tqdm.auto`` in a kernel) appear in ``box``
    (a widget Box) instead of being displayed as outputs, which a front end drops once the
    message that started the computation has been answered; ``box`` is emptied afterwards."""
    try:
        import tqdm.notebook as tn
    except ImportError:  # no ipywidgets: text bars on stderr
        yield
        return
    import ipywidgets as W

    original = tn.display

    def show(obj, *args, **kwargs):
        if isinstance(obj, W.Widget):  # keep the open bars (a finished leave=False bar closes its widget)
            box.children = (*[c for c in box.children if getattr(c, "comm", None) is not None][-2:], obj)
        else:
            original(obj, *args, **kwargs)

    tn.display = show
    try:
        yield
    finally:
        tn.display = original
        box.children = ()


_STYLE = """<style>
.probelib-stale { opacity: 0.3; transition: opacity 0.2s; }
.probelib-explorer-error { color: #a00; font-weight: bold; }
.probelib-explorer-summary table { border-collapse: collapse; font-size: 14px; }
.probelib-explorer-summary td, .probelib-explorer-summary th { border: 1px solid #ccc; padding: 3px 8px; }
.probelib-explorer-reason { color: #666; font-style: italic; }
</style>"""


class Explorer:
    """The severity explorer page: controls, progress, error line, summary and one figure.

    Each control change schedules an update (``debounce_s`` after the last change, so a run of
    slider steps computes once); :meth:`update` computes now. A control that cannot apply is
    disabled with the reason beside it. ``compare`` shows two settings side by side:
    ``"adabn"`` (source vs AdaBN, batch-norm models) or ``"trades"`` (natural vs TRADES).
    """

    def __init__(self, dataset: str = "mnist5kwo9", model: str = "natural", corruption: str = "gaussian_noise",
                 severity: int = 3, adabn: bool = False, *, compare: str = "off", eps: float = 2.0,
                 n_images: int | None = 1000, n_show: int = 16, smoke: bool = False, device=None,
                 datasets: Sequence[str] = ("mnist5k", "mnist5kwo9"), debounce_s: float = 0.4):
        import ipywidgets as W

        from probelib.corruptions import corruption_names

        if compare not in COMPARE_MODES:
            raise unknown_name("compare mode", compare, COMPARE_MODES)
        self.options = {"eps": eps, "n_images": n_images, "n_show": n_show, "smoke": smoke, "device": device}
        self.debounce_s = float(debounce_s)
        self.controls = {
            "dataset": W.Dropdown(options=sorted({dataset, *datasets}), value=dataset, description="dataset"),
            "model": W.Dropdown(options=EXPLORER_MODELS, value=model, description="model"),
            "corruption": W.Dropdown(options=corruption_names(extra=True), value=corruption,
                                     description="corruption"),
            "severity": W.IntSlider(value=severity, min=1, max=5, description="severity", continuous_update=False),
            "adabn": W.Checkbox(value=adabn, description="AdaBN", indent=False),
            "compare": W.Dropdown(options=[(v, k) for k, v in COMPARE_MODES.items()], value=compare,
                                  description="compare"),
        }
        self.reasons = {k: W.HTML(layout=W.Layout(margin="0 1em")) for k in ("model", "adabn", "compare")}
        for r in self.reasons.values():
            r.add_class("probelib-explorer-reason")
        self.status = W.HTML()
        self.status.add_class("probelib-explorer-status")
        self.progress = W.VBox()  # tqdm bars (training epochs, scoring batches) while a setting computes
        self.error = W.HTML()
        self.error.add_class("probelib-explorer-error")
        self.summary = W.HTML()
        self.summary.add_class("probelib-explorer-summary")
        # The figure is an Image widget: its bytes travel as widget state, so an update computed
        # after the triggering message was answered (the debounce) still reaches the page, and the
        # page holds exactly one figure, whatever the notebook front end or its inline backend do.
        self.figure = W.Image(format="png", layout=W.Layout(max_width="100%", display="none"))
        self.figure.add_class("probelib-explorer-figure")
        self.caption = W.HTML()
        self.caption.add_class("probelib-explorer-figure-caption")
        c, r = self.controls, self.reasons
        self.widget = W.VBox([
            W.HTML(_STYLE),
            W.HBox([c["dataset"], c["model"], r["model"]]),
            W.HBox([c["corruption"], c["severity"]]),
            W.HBox([c["adabn"], r["adabn"]]),
            W.HBox([c["compare"], r["compare"]]),
            self.status, self.progress, self.error, self.summary, self.caption, self.figure])
        self.widget.add_class("probelib-explorer")
        self.result: dict[str, Any] | None = None      # the last single setting (or compare's first)
        self.results: list[dict[str, Any]] = []        # what the page shows now
        self.updates = 0                               # finished updates (figures shown)
        self.failures = 0
        self._pending = None
        self._refresh_controls()
        for w in self.controls.values():
            w.observe(self._changed, names="value")

    # ---- controls
    def setting(self) -> dict[str, Any]:
        """The control values: dataset, model, corruption, severity, adabn, compare."""
        return {name: w.value for name, w in self.controls.items()}

    def _refresh_controls(self) -> None:
        """Disable what cannot apply, with the reason beside it."""
        s = self.setting()
        c, r = self.controls, self.reasons
        compare = s["compare"]
        c["model"].disabled = compare == "trades"
        r["model"].value = "compare mode fixes the models: natural and TRADES" if compare == "trades" else ""
        try:
            models = ("natural", "trades") if compare == "trades" else (s["model"],)
            why_not = next((w for m in models if (w := adabn_unavailable(s["dataset"], m, self.options["eps"]))),
                           None)
        except Exception as err:  # a bad dataset or eps: the update reports it
            why_not = f"({type(err).__name__})"
        if compare == "adabn":
            c["adabn"].disabled = True
            r["adabn"].value = "compare mode shows both: source and AdaBN"
        else:
            c["adabn"].disabled = why_not is not None
            r["adabn"].value = why_not or ""
        r["compare"].value = (f"source vs AdaBN cannot apply: {why_not}; pick bn_wrn"
                              if compare == "adabn" and why_not else "")

    def _changed(self, change: Mapping[str, Any] | None = None) -> None:
        self._refresh_controls()
        self.schedule()

    def schedule(self) -> None:
        """Update ``debounce_s`` after the last call (at once when no event loop runs)."""
        import asyncio

        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self.debounce_s <= 0:
            self.update()
            return
        self._pending = loop.call_later(self.debounce_s, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self.update()

    # ---- computing and drawing
    def _stage(self, text: str) -> None:
        self.status.value = f"<b>Computing</b> {html.escape(self._computing)}: {html.escape(text)} …"

    def _compute(self, s: Mapping[str, Any]) -> list[dict[str, Any]]:
        o = self.options
        common = dict(dataset=s["dataset"], corruption=s["corruption"], severity=s["severity"], eps=o["eps"],
                      n_images=o["n_images"], n_show=o["n_show"] if s["compare"] == "off" else min(o["n_show"], 8),
                      smoke=o["smoke"], device=o["device"], progress=True, stage=self._stage)
        if s["compare"] == "off":
            return [explore_setting(model=s["model"], adabn=s["adabn"], **common)]
        if s["compare"] == "adabn":
            why_not = adabn_unavailable(s["dataset"], s["model"], o["eps"])
            if why_not:
                raise ValueError(f"source vs AdaBN cannot apply: {why_not}; pick the bn_wrn model")
            return [explore_setting(model=s["model"], adabn=flag, **common) for flag in (False, True)]
        return [explore_setting(model=m, adabn=s["adabn"], **common) for m in ("natural", "trades")]

    def update(self, *, raise_errors: bool = False) -> dict[str, Any] | None:
        """Compute the setting the controls name and redraw: progress while computing, then the
        summary and exactly one figure; an error shows as a message (and is raised again with
        ``raise_errors``, as the notebook's first render does, so papermill fails with it).
        Returns the (first) result, None after an error."""
        s = self.setting()
        model = "natural and trades" if s["compare"] == "trades" else s["model"]
        arm = COMPARE_MODES[s["compare"]] if s["compare"] == "adabn" else "AdaBN" if s["adabn"] else "source"
        self._computing = setting_label({**s, "model": model, "adabn": arm == "AdaBN"})
        if s["compare"] == "adabn":
            self._computing = self._computing.replace("· source", "· source vs AdaBN")
        self.status.value = f"<b>Computing</b> {html.escape(self._computing)} …"
        self.error.value = ""
        for w in (self.summary, self.figure):
            w.add_class("probelib-stale")
        t0 = time.time()
        failure: BaseException | None = None
        with _bars_into(self.progress):
            try:
                results = self._compute(s)
                fig = plot_setting(results[0]) if len(results) == 1 else plot_compare(*results)
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
            except Exception as err:  # shown in the page; raised again below when asked
                failure = err
        for w in (self.summary, self.figure):
            w.remove_class("probelib-stale")
        if failure is not None:
            self.failures += 1
            self.results, self.result = [], None
            self.status.value = ""
            self.error.value = (f"Could not compute {html.escape(self._computing)}: "
                                f"{html.escape(type(failure).__name__)}: {html.escape(str(failure))}")
            self.summary.value = self.caption.value = ""
            self.figure.layout.display = "none"
            self.figure.value = b""
            if raise_errors:
                raise failure
            return None
        self.results, self.result = results, results[0]
        self.summary.value = summary_table(results).to_html(index=False, border=0, escape=True)
        self.figure.value = buf.getvalue()
        self.figure.layout.display = None
        self.caption.value = "Figure: " + html.escape("   vs   ".join(setting_label(r) for r in results))
        self.updates += 1
        self.status.value = (f"Showing {html.escape(self._computing)} "
                             f"(computed in {time.time() - t0:.1f} s; update {self.updates})")
        return self.result

    def show(self) -> dict[str, Any]:
        """Display the page and compute the initial setting; an error is shown and raised."""
        from IPython.display import display

        display(self.widget)
        return self.update(raise_errors=True)


# --------------------------------------------------------------------------- serving it (Voilà)

EXPLORER_NOTEBOOK = "40_severity_explorer.ipynb"


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc, timeout_s: float) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Voilà exited with status {proc.returncode} before serving on port {port}; "
                               "its messages are above")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"Voilà did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


def explorer_notebook(parameters: Mapping[str, Any], folder: str | os.PathLike,
                      notebooks_dir: str | os.PathLike | None = None) -> Path:
    """Notebook 40 with ``parameters`` injected (as papermill does) written into ``folder``.

    An unknown parameter name raises ValueError listing the notebook's parameters.
    """
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from probelib.suite import DEFAULT_NOTEBOOKS, notebook_parameters

    source = Path(notebooks_dir or DEFAULT_NOTEBOOKS) / EXPLORER_NOTEBOOK
    if not source.is_file():
        raise FileNotFoundError(f"the explorer notebook {str(source)!r} does not exist")
    known = notebook_parameters(source)
    for key in parameters:
        if key not in known or key == "results_dir":
            raise unknown_name("explorer parameter", key, [k for k in known if k != "results_dir"])
    nb = load_notebook_node(str(source))  # as papermill reads it (every cell gets metadata.tags)
    if parameters:
        nb = parameterize_notebook(nb, dict(parameters))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / EXPLORER_NOTEBOOK
    from probelib.store import atomic_write

    with atomic_write(target) as tmp:
        nbformat.write(nb, str(tmp))
    return target


def start_explorer(parameters: Mapping[str, Any] | None = None, *, port: int = 0, folder=None,
                   env: Mapping[str, str] | None = None, timeout_s: float = 60.0, quiet: bool = False):
    """Serve notebook 40 (with ``parameters``) as a web app with Voilà on 127.0.0.1:``port``
    (0: a free port). Returns ``(process, url)`` once the server listens; stop it with
    :func:`stop_explorer`. The kernel imports this probelib and uses the project's store.
    """
    import subprocess
    import sys
    import tempfile

    from probelib.suite import _kernel_env

    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="probelib-explore-"))
    notebook = explorer_notebook(parameters or {}, folder)
    port = int(port) or _free_port()
    cmd = [sys.executable, "-m", "voila", str(notebook), f"--port={port}", "--no-browser",
           "--Voila.ip=127.0.0.1", "--Voila.port_retries=0", "--show_tracebacks=False"]
    full_env = {**os.environ, **_kernel_env(None), **dict(env or {})}
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(cmd, cwd=str(folder), env=full_env, stdout=out, stderr=out,
                            start_new_session=True)
    try:
        _wait_for_port(port, proc, timeout_s)
    except BaseException:
        stop_explorer(proc)
        raise
    return proc, f"http://127.0.0.1:{port}/"


def stop_explorer(proc, timeout_s: float = 10.0) -> None:
    """Stop a server :func:`start_explorer` started (and its kernels): SIGTERM, then SIGKILL."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # its own session: the server and the kernels it started
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _cmd_explore(args) -> int:
    from probelib.suite import load_parameter_file, parse_parameter_value

    parameters: dict[str, Any] = {}
    for f in args.parameters_file or []:
        parameters.update(load_parameter_file(f))
    for key, value in args.parameters or []:
        parameters[key] = parse_parameter_value(value)
    for key, value in args.parameters_raw or []:
        parameters[key] = value
    if args.smoke:
        parameters["smoke"] = True
    proc, url = start_explorer(parameters, port=args.port)
    print(f"severity explorer: {url}  (Ctrl-C stops it)", flush=True)
    try:
        return proc.wait() and 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_explorer(proc)


def add_cli(subparsers) -> None:
    """Add ``explore`` (notebook 40 as a web app) to ``python -m probelib``."""
    p = subparsers.add_parser(
        "explore", help="serve the severity explorer (notebook 40) as a web app with Voilà",
        description="Serve notebooks/40_severity_explorer.ipynb as a standalone web page (Voilà, code hidden) "
                    "on 127.0.0.1 and print its URL. Models come from the project's precomputed/ store "
                    "(trained on first use).")
    p.add_argument("--port", type=int, default=8866, help="port on 127.0.0.1 (default 8866; 0 = any free port)")
    p.add_argument("-p", "--parameters", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="initial state, as for run: dataset, model, corruption, severity, adabn, compare, eps, "
                        "n_images, smoke, device (True/False/None/numbers converted)")
    p.add_argument("-r", "--parameters-raw", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="parameter kept as a string")
    p.add_argument("-f", "--parameters-file", action="append", metavar="PARAMS.yaml", help="YAML file of parameters")
    p.add_argument("--smoke", action="store_true", help="tiny models and 64 images (smoke=True)")
    p.set_defaults(func=_cmd_explore)

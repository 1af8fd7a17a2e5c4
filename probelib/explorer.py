"""The severity explorer (notebook 40, ``python -m probelib explore``): what it computes and draws.

:func:`explore_setting` scores one setting (dataset, model, corruption, severity, AdaBN on/off);
:func:`plot_setting` and :func:`plot_compare` draw one or two settings; :func:`summary_table` is
the few columns a person reads. The interactive page that shows them is
:class:`probelib.explorer_app.Explorer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from probelib._util import unknown_name

__all__ = ["EXPLORER_MODELS", "EXPLORER_SMOKE", "COMPARE_MODES", "explorer_config", "adabn_unavailable",
           "explore_setting", "setting_label", "summary_table", "plot_setting", "plot_compare",
           "initial_state_name", "initial_state_verdict"]

EXPLORER_MODELS = ("natural", "trades", "at", "bn_wrn")
#: The explorer's smoke size (``smoke=True``): test images scored per setting, and training small
#: enough for a test yet well above chance on the embedded digits (TrainConfig fields).
EXPLORER_SMOKE = {"n_images": 64,
                  "training": {"epochs": 2, "max_train": 600, "max_test": 100, "optimizer": "adam", "lr": 1e-3,
                               "batch_size": 32, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}}
COMPARE_MODES = {"off": "one setting", "adabn": "source vs AdaBN", "trades": "natural vs TRADES"}
_CACHE: dict[tuple, Any] = {}


def explorer_config(dataset: str, model: str, *, eps: float = 2.0, smoke: bool = False):
    """The :class:`~probelib.training.TrainConfig` behind an explorer model choice on ``dataset``.

    ``natural``/``trades``/``at``: the NCG paper's pixel-space settings (as notebook 20 trains
    them); ``bn_wrn``: Burns & Steinhardt's BN WideResNet for the dataset's family, trained on
    ``dataset`` itself (a ``…woK`` name holds class K out, as for the other models).
    ``smoke`` shrinks training to :data:`EXPLORER_SMOKE`'s.
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
    return cfg.replace(**EXPLORER_SMOKE["training"]) if smoke else cfg


def _cached(key: tuple, compute: Callable[[], Any], keep: int = 12) -> Any:
    if key not in _CACHE:
        while len(_CACHE) >= keep:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = compute()
    return _CACHE[key]


def _dataset(name: str):
    from probelib.data import data_fingerprint, load_dataset

    return _cached(("dataset", name, data_fingerprint(name)), lambda: load_dataset(name))


def adabn_unavailable(dataset: str, model: str, *, eps: float = 2.0) -> str | None:
    """Why AdaBN cannot apply to ``model`` on ``dataset`` (a sentence), or None when it can."""
    from probelib.adabn import bn_layers

    cfg = explorer_config(dataset, model, eps=eps)
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
        cap = EXPLORER_SMOKE["n_images"]
        n_images = cap if n_images is None else min(int(n_images), cap)
    cfg = explorer_config(dataset, model, eps=eps, smoke=smoke)
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


def plot_setting(result: Mapping[str, Any], *, n_cols: int = 8):
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


def plot_compare(first: Mapping[str, Any], second: Mapping[str, Any], *, n_cols: int = 4):
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

"""NCG's robustness study (spec §3): closest adversarial examples of the OOD points' nearest
training neighbours (``get_rob``), their radii against the OOD distances (Fig. 3), and the
robustness table's row."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from probelib._util import check_images, compute_device
from probelib.attacks._common import AttackResult, _check_count, _check_labels
from probelib.attacks.minimum_norm import MIN_NORM_ATTACKS, STUDY_ATTACK, min_norm_attack
from probelib.metrics import predict_labels

if TYPE_CHECKING:
    import pandas as pd

    from probelib.store import Store


@dataclass
class ClosestAdversarial:
    """Closest adversarial examples of sampled training points (NCG spec §3, ``get_rob``).

    ``indices``: int64 training indices attacked; ``x_adv``: their adversarial images (clean
    image where the attack failed); ``success``: bool; ``radii``: L2 radius, ``inf`` on failure;
    ``attack``: the attack's name; ``pool_size``: how many candidates were eligible.
    """

    indices: np.ndarray
    x_adv: torch.Tensor
    success: np.ndarray
    radii: np.ndarray
    attack: str
    pool_size: int


def closest_adversarial(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
                        nn_indices: np.ndarray | torch.Tensor, n: int = 300, seed: int = 0,
                        attack: str | Callable[..., AttackResult] = STUDY_ATTACK,
                        device: str | torch.device | None = None, progress: bool = True, *,
                        store: "Store | None | bool" = None, name: str = "closest_adversarial",
                        **attack_kwargs) -> ClosestAdversarial:
    """NCG's ``get_rob``: the closest adversarial examples of ``n`` sampled NN training points.

    The candidates are the unique training indices that are the nearest neighbour of some OOD
    point (``nn_indices``, one per OOD point), kept where ``model`` classifies them correctly;
    ``n`` of them (all if fewer) are drawn without replacement with
    ``np.random.default_rng(seed)`` and attacked at their true labels with ``attack`` (a name
    in :data:`MIN_NORM_ATTACKS` or a callable ``(model, x, y, **kw) -> AttackResult``).
    ``device`` defaults to the model's. Returns a :class:`ClosestAdversarial` sorted by index.

    ``store``: a :class:`~probelib.store.Store`, ``None`` for the default store, ``False`` for no
    caching (as :func:`probelib.metrics.predict_labels`). The result is kept under kind
    ``"robustness"``, file ``<name>-<attack>``; the key fingerprints the model's weights, the
    training set, ``nn_indices`` and every argument (``n``, ``seed``, ``attack`` and its keyword
    arguments; ``device``/``progress``/``name`` excluded), so a re-run loads it and any change
    recomputes it. A callable ``attack`` cannot be named in the key: pass it with ``store=False``.
    """
    nn_indices = _checked_inputs(train_x, train_y, nn_indices, n)
    if isinstance(attack, str):
        min_norm_attack(attack)  # an unknown name fails here, before any store lookup
    if store is False:
        return _closest_adversarial(model, train_x, train_y, nn_indices, n=n, seed=seed, attack=attack,
                                    device=device, progress=progress, **attack_kwargs)
    from probelib.store import default_store, fingerprint

    if not isinstance(attack, str):
        raise ValueError("closest_adversarial caches its result under the attack's name: pass the attack by name "
                         f"(one of {sorted(MIN_NORM_ATTACKS)}), or a callable attack with store=False")
    st = default_store() if store is None or store is True else store
    hashed = {**attack_kwargs, "n": n, "seed": seed, "attack": attack}
    key = fingerprint("closest_adversarial", model, train_x, train_y, nn_indices, hashed)

    def compute() -> dict[str, np.ndarray]:
        r = _closest_adversarial(model, train_x, train_y, nn_indices, n=n, seed=seed, attack=attack,
                                 device=device, progress=progress, **attack_kwargs)
        return {"indices": r.indices, "x_adv": r.x_adv.numpy(), "success": r.success,
                "radii": r.radii, "pool_size": np.array(r.pool_size)}

    a = st.cached_arrays("robustness", f"{name}-{attack}", key, compute)
    return ClosestAdversarial(indices=a["indices"], x_adv=torch.from_numpy(a["x_adv"]), success=a["success"],
                              radii=a["radii"], attack=attack, pool_size=int(a["pool_size"]))


def _checked_inputs(train_x: torch.Tensor, train_y: torch.Tensor, nn_indices, n: int) -> np.ndarray:
    """Check :func:`closest_adversarial`'s inputs; return ``nn_indices`` as a numpy array."""
    check_images(train_x, "train_x")
    _check_labels(train_x, train_y)
    _check_count("n", n)
    nn_indices = np.asarray(nn_indices.cpu() if isinstance(nn_indices, torch.Tensor) else nn_indices)
    if nn_indices.size == 0 or not np.issubdtype(nn_indices.dtype, np.integer):
        raise ValueError("nn_indices must be a non-empty integer array (the training index of each "
                         f"OOD point's nearest neighbour), got dtype {nn_indices.dtype}, size {nn_indices.size}")
    if nn_indices.min() < 0 or nn_indices.max() >= len(train_x):
        raise ValueError(f"nn_indices must index train_x (0..{len(train_x) - 1}), got range "
                         f"[{nn_indices.min()}, {nn_indices.max()}]; were the neighbours computed "
                         "against this training set?")
    return nn_indices


def _closest_adversarial(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
                         nn_indices: np.ndarray, *, n: int, seed: int,
                         attack: str | Callable[..., AttackResult], device: str | torch.device | None,
                         progress: bool, **attack_kwargs) -> ClosestAdversarial:
    """:func:`closest_adversarial`'s computation, uncached, on inputs :func:`_checked_inputs` passed."""
    attack_fn, attack_name = ((min_norm_attack(attack), attack) if isinstance(attack, str)
                              else (attack, getattr(attack, "__name__", "custom")))
    device = compute_device(model, device)

    candidates = np.unique(nn_indices.ravel())
    index = torch.as_tensor(candidates)
    correct = predict_labels(model, train_x[index], store=False, device=device) == train_y[index].cpu().numpy()
    pool = candidates[correct]
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False)).astype(np.int64)
    if len(chosen) == 0:
        raise ValueError("no candidate is classified correctly by the model; nothing to attack")
    pick = torch.as_tensor(chosen)
    result = attack_fn(model, train_x[pick].to(device), train_y[pick].to(device),
                       progress=progress, **attack_kwargs)
    return ClosestAdversarial(indices=chosen, x_adv=result.x_adv.cpu(),
                              success=result.success.cpu().numpy(),
                              radii=result.norms.cpu().double().numpy(), attack=attack_name,
                              pool_size=len(pool))


# ----------------------------------------------------------------------------------------------
# NCG Fig. 3: robust radius vs OOD distance
# ----------------------------------------------------------------------------------------------

def radius_vs_ood_distance(rob: ClosestAdversarial, nn_indices, nn_distances, ood_predictions,
                           train_y) -> "pd.DataFrame":
    """Pair each OOD point with the robust radius of its nearest training neighbour (NCG spec §3.3).

    One row per OOD point j whose NN k was attacked successfully (points where the attack
    failed are dropped, as upstream): ``ood_index``, ``nn_index``, ``distance`` D_j (OOD→NN,
    L2, pixel space like the radius), ``radius`` r_k, ``within_radius`` (D_j < r_k) and
    ``ncg_correct`` (the model labels j with y[k]).
    """
    import pandas as pd

    nn_indices = np.asarray(nn_indices).reshape(-1)
    nn_distances = np.asarray(nn_distances, dtype=np.float64).reshape(-1)
    ood_predictions = np.asarray(ood_predictions.cpu() if isinstance(ood_predictions, torch.Tensor)
                                 else ood_predictions).reshape(-1)
    train_y = np.asarray(train_y.cpu() if isinstance(train_y, torch.Tensor) else train_y)
    if not (len(nn_indices) == len(nn_distances) == len(ood_predictions)):
        raise ValueError("nn_indices, nn_distances and ood_predictions need one entry per OOD point; got "
                         f"{len(nn_indices)}, {len(nn_distances)}, {len(ood_predictions)}")
    radius_of = dict(zip(rob.indices[rob.success].tolist(), rob.radii[rob.success].tolist()))
    rows = np.flatnonzero(np.isin(nn_indices, list(radius_of)))
    k = nn_indices[rows]
    radius = np.array([radius_of[i] for i in k.tolist()], dtype=np.float64)
    return pd.DataFrame({
        "ood_index": rows, "nn_index": k, "distance": nn_distances[rows], "radius": radius,
        "within_radius": nn_distances[rows] < radius,
        "ncg_correct": ood_predictions[rows] == train_y[k],
    })


@dataclass(frozen=True)
class RobustnessSummary:
    """NCG's robustness-table row for one model (spec §3.4).

    ``mean_radius`` / ``median_radius`` are over the successfully attacked points;
    ``mean_distance``, ``xd`` (fraction with D < r) and ``covered`` (D < r and NCG-correct) over the
    ``ood_points`` OOD points paired with them; ``ncg`` is the overall score; ``attacked`` and
    ``failed`` count the attacked points. :meth:`row` names the fields as the saved table does."""

    attacked: int
    failed: int
    mean_radius: float
    median_radius: float
    ood_points: int
    mean_distance: float
    xd: float
    covered: float
    ncg: float

    #: column of each field in the robustness table (NCG's names)
    COLUMNS = {"attacked": "attacked", "failed": "failed", "mean_radius": "mean radius",
               "median_radius": "median radius", "ood_points": "OOD points", "mean_distance": "mean distance",
               "xd": "XD", "covered": "covered", "ncg": "NCG"}

    def row(self) -> dict[str, float]:
        """The table row: field values under the table's column names, in field order."""
        return {self.COLUMNS[f.name]: getattr(self, f.name) for f in fields(self)}


def robustness_summary(rob: ClosestAdversarial, pairs: "pd.DataFrame", ncg: float) -> RobustnessSummary:
    """NCG's robustness-table row (:class:`RobustnessSummary`) of ``rob`` and its OOD ``pairs``
    (:func:`radius_vs_ood_distance`); ``ncg`` is the overall NCG score."""
    ok = rob.success
    nan = float("nan")
    return RobustnessSummary(
        attacked=int(len(ok)), failed=int((~ok).sum()),
        mean_radius=float(rob.radii[ok].mean()) if ok.any() else nan,
        median_radius=float(np.median(rob.radii[ok])) if ok.any() else nan,
        ood_points=int(len(pairs)),
        mean_distance=float(pairs["distance"].mean()) if len(pairs) else nan,
        xd=float(pairs["within_radius"].mean()) if len(pairs) else nan,
        covered=float((pairs["within_radius"] & pairs["ncg_correct"]).mean()) if len(pairs) else nan,
        ncg=float(ncg))


def robustness_table(summaries: Mapping[str, RobustnessSummary], *, attack: str) -> "pd.DataFrame":
    """The robustness table: one row per method (index ``method``), NCG's columns, and ``attack``."""
    import pandas as pd

    return (pd.DataFrame.from_dict({m: s.row() for m, s in summaries.items()}, orient="index")
            .rename_axis("method").assign(attack=attack))


def plot_radius_histograms(radii, distances, ax=None, title: str = "", bins: int = 20,
                           offset: float = 1e-5):
    """NCG Fig. 3 panel: histogram of ln(robust radius) over ln(OOD distance + ``offset``), ``bins`` each."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3))
    radii = np.asarray(radii, dtype=np.float64)
    radii = radii[np.isfinite(radii) & (radii > 0)]
    ax.hist(np.log(np.asarray(distances, dtype=np.float64) + offset), bins=bins, alpha=0.6,
            label="OOD distance")
    ax.hist(np.log(radii), bins=bins, alpha=0.6, label="empirical robust radius")
    ax.set_xlabel("ln(L2 distance)")
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def radius_far_below(summary: RobustnessSummary, *, ratio: float = 0.5, max_xd: float = 0.01) -> bool:
    """Whether a :class:`RobustnessSummary` has its radius far below the OOD distance:
    mean radius ≤ ``ratio`` × mean distance and at most ``max_xd`` of OOD points within it."""
    return bool(summary.mean_radius <= ratio * summary.mean_distance and summary.xd <= max_xd)

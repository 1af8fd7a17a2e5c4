"""Readers for the real datasets, in the layouts they are published in (see data/README.md).

Nothing is downloaded: a missing or partial dataset raises :class:`DatasetNotFoundError`
naming the path looked at, the layout expected there and where the dataset is published.
CIFAR batches are Python pickles by format; they are read with a restricted unpickler that
only rebuilds plain containers and NumPy arrays, so a planted pickle cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from probelib._util import check_labels
from probelib.data.core import DatasetNotFoundError, TensorSet

if TYPE_CHECKING:
    from torchvision import transforms

# Where each dataset is published, and the layout probelib expects under the data root.
LAYOUTS: dict[str, tuple[str, str]] = {
    "mnist": ("MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (uncompressed idx files, "
              "as torchvision.datasets.MNIST stores them)",
              "http://yann.lecun.com/exdb/mnist/ (or torchvision.datasets.MNIST(root, download=True))"),
    "cifar10": ("cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}",
                "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version)"),
    "cifar100": ("cifar-100-python/{train, test, meta}",
                 "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-100 python version)"),
    "tinyimagenet": ("tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, "
                     "val/images/*.JPEG, val/val_annotations.txt}",
                     "http://cs231n.stanford.edu/tiny-imagenet-200.zip"),
    "imagenet": ("imagenet/{train,val}/<wnid>/*.JPEG (ILSVRC2012, val sorted into wnid folders)",
                 "https://image-net.org/download (ILSVRC2012)"),
    "imgnet100": ("imagenet100.txt (100 wnids, one per line) next to imagenet/{train,val}/<wnid>/*.JPEG",
                  "https://image-net.org/download (ILSVRC2012); class list: the CMC ImageNet-100 list"),
    "imagenet-v2": ("imagenetv2-matched-frequency-format-val/<class index 0..999>/*.jpeg",
                    "https://github.com/modestyachts/ImageNetV2 (matched-frequency)"),
    "stylized-imagenet": ("stylized-imagenet/val/<wnid>/*",
                          "https://github.com/rgeirhos/Stylized-ImageNet"),
}
LAYOUTS["cifar100coarse"] = LAYOUTS["cifar100"]

_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def missing(dataset: str, path: Path, detail: str = "") -> DatasetNotFoundError:
    """The error for a missing or partial dataset."""
    layout, source = LAYOUTS[dataset]
    detail = f" ({detail})" if detail else ""
    return DatasetNotFoundError(
        f"dataset {dataset!r} not found: looked at {path}{detail}. Expected layout under the data "
        f"root: {layout}. Published at {source}. Place it there, or point PROBELIB_DATA (or root=) "
        f"at the folder that holds it; probelib never downloads silently. See data/README.md.")


def _require(dataset: str, *paths: Path) -> None:
    for p in paths:
        if not p.exists():
            raise missing(dataset, p, "missing")


# --------------------------------------------------------------------------- MNIST
def read_idx(path: Path, ndim: int, dataset: str = "mnist") -> np.ndarray:
    """One uncompressed idx file of unsigned bytes (magic 0x0000 08 ``ndim``) as a uint8 array.

    The header's type, rank and sizes are checked against the file's length, so a truncated,
    gzipped or wrong file is named instead of misread.
    """
    data = path.read_bytes()
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        head = data[:4].hex() if data[:2] != b"\x1f\x8b" else "gzip data (gunzip it first)"
        raise missing(dataset, path, f"not an idx file of {ndim}-D unsigned bytes (header {head}, expected "
                                     f"0000080{ndim})")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)):
        raise missing(dataset, path, f"idx header says {shape} = {int(np.prod(shape))} bytes but the file holds "
                                     f"{len(body)}: truncated or damaged; copy it again")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def mnist(root: Path):
    """MNIST from the raw idx files under ``MNIST/raw`` (the layout data/README.md describes).

    The idx files are read directly: torchvision's cached ``MNIST/processed/*.pt`` (which may
    be stale) are never consulted. Labels must lie in 0..9, one per image.
    """
    raw = root / "MNIST" / "raw"
    _require("mnist", *(raw / f for f in _MNIST_FILES))
    sets = []
    for prefix in ("train", "t10k"):
        images_path, labels_path = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
        images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
        if images.shape[1:] != (28, 28):
            raise missing("mnist", images_path, f"images must be 28×28, got {images.shape[1:]}")
        y = _checked_labels(labels, 10, len(images), labels_path, "mnist")
        x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
        sets.append(TensorSet(x, y))
    return sets[0], sets[1], [str(d) for d in range(10)], (1, 28, 28)


def _checked_labels(labels, num_classes: int, n: int, path: Path, dataset: str) -> torch.Tensor:
    """Labels read from ``path`` as a long tensor after checking them (integers in 0..C−1, one per image)."""
    try:
        return torch.from_numpy(check_labels(np.asarray(labels), num_classes, "labels", n=n, where=str(path)))
    except ValueError as err:
        raise ValueError(f"dataset {dataset!r}: {err}. The file is damaged or not the published one: copy it "
                         f"again from {LAYOUTS[dataset][1]}") from None


# --------------------------------------------------------------------------- CIFAR
class _SafeUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings, bytes and NumPy arrays only; refuses any other global."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: CIFAR batches hold only arrays and lists")


def read_cifar_batch(path: Path, dataset: str = "cifar10") -> dict:
    """Read one CIFAR python batch with the restricted unpickler; keys come back as str."""
    try:
        with open(path, "rb") as fh:
            raw = _SafeUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise missing(dataset, path, f"not a readable CIFAR batch: {err}") from err
    if not isinstance(raw, dict):
        raise missing(dataset, path, "not a CIFAR batch (expected a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _cifar_images(batch: dict, path: Path, dataset: str) -> torch.Tensor:
    data = np.asarray(batch.get("data"))
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise missing(dataset, path, f"'data' must be uint8 N×3072, got {data.dtype} {data.shape}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)


def cifar10(root: Path):
    """CIFAR-10 from ``cifar-10-batches-py``."""
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    _require("cifar10", *(folder / n for n in names))
    sets = []
    for group in (names[:5], ["test_batch"]):
        xs, ys = [], []
        for n in group:
            b = read_cifar_batch(folder / n)
            xs.append(_cifar_images(b, folder / n, "cifar10"))
            xs_n = len(xs[-1])
            ys.append(_checked_labels(b.get("labels"), 10, xs_n, folder / n, "cifar10"))
        sets.append(TensorSet(torch.cat(xs), torch.cat(ys)))
    meta = read_cifar_batch(folder / "batches.meta")
    return sets[0], sets[1], [str(n) for n in meta["label_names"]], (3, 32, 32)


def cifar100(root: Path, coarse: bool):
    """CIFAR-100 from ``cifar-100-python`` with fine (100) or coarse (20) labels."""
    name = "cifar100coarse" if coarse else "cifar100"
    folder = root / "cifar-100-python"
    _require(name, folder / "train", folder / "test", folder / "meta")
    key = "coarse_labels" if coarse else "fine_labels"
    sets = []
    for split in ("train", "test"):
        b = read_cifar_batch(folder / split, name)
        x = _cifar_images(b, folder / split, name)
        sets.append(TensorSet(x, _checked_labels(b.get(key), 20 if coarse else 100, len(x), folder / split, name)))
    meta = read_cifar_batch(folder / "meta", name)
    names = meta["coarse_label_names" if coarse else "fine_label_names"]
    return sets[0], sets[1], [str(n) for n in names], (3, 32, 32)


# --------------------------------------------------------------------------- folders
def imagenet_transform() -> transforms.Compose:
    """Burns & Steinhardt's ImageNet evaluation transform without normalisation (the model has it)."""
    from torchvision import transforms  # torchvision's import costs seconds: only where a loader needs it

    return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])


def aug10_transform() -> transforms.Compose:
    """NCG's ``aug10`` preprocessing for ImageNet-100: Resize(128), CenterCrop(112)."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(128), transforms.CenterCrop(112), transforms.ToTensor()])


def _rgb_loader(path: str):
    from PIL import Image

    with open(path, "rb") as fh:
        return Image.open(fh).convert("RGB")


class ImageFiles(Dataset):
    """A lazy list of image files with integer labels (``.targets``) and a transform."""

    def __init__(self, paths: list[Path], targets: list[int], transform):
        self.paths, self.targets, self.transform = list(paths), list(targets), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(_rgb_loader(str(self.paths[i]))), self.targets[i]


_IMAGE_EXT = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXT)


def class_folder_set(dataset: str, folder: Path, classes: list[str], transform) -> ImageFiles:
    """Images in ``folder/<class>/`` for each name in ``classes`` (label = position in ``classes``)."""
    paths, targets = [], []
    for label, cls in enumerate(classes):
        sub = folder / cls
        if not sub.is_dir():
            raise missing(dataset, sub, f"class folder {cls!r} missing")
        imgs = _images_in(sub)
        paths += imgs
        targets += [label] * len(imgs)
    if not paths:
        raise missing(dataset, folder, "no images found")
    return ImageFiles(paths, targets, transform)


def _wnid_folders(dataset: str, folder: Path) -> list[str]:
    if not folder.is_dir():
        raise missing(dataset, folder, "missing")
    wnids = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not wnids:
        raise missing(dataset, folder, "no class folders")
    return wnids


def tinyimagenet(root: Path):
    """Tiny-ImageNet-200 (64 px, no resize): train folders and the annotated val split as test."""
    base = root / "tiny-imagenet-200"
    _require("tinyimagenet", base / "wnids.txt", base / "train", base / "val" / "val_annotations.txt")
    wnids = sorted(w.strip() for w in (base / "wnids.txt").read_text().split() if w.strip())
    index = {w: i for i, w in enumerate(wnids)}
    from torchvision import transforms

    tf = transforms.ToTensor()
    train_paths, train_y = [], []
    for w in wnids:
        sub = base / "train" / w / "images"
        if not sub.is_dir():
            raise missing("tinyimagenet", sub, f"train folder of {w} missing")
        imgs = _images_in(sub)
        train_paths += imgs
        train_y += [index[w]] * len(imgs)
    val_paths, val_y = [], []
    for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        p = base / "val" / "images" / parts[0]
        if parts[1] not in index:
            raise missing("tinyimagenet", base / "val" / "val_annotations.txt",
                          f"unknown wnid {parts[1]!r} in val annotations")
        if not p.exists():
            raise missing("tinyimagenet", p, "val image listed in val_annotations.txt missing")
        val_paths.append(p)
        val_y.append(index[parts[1]])
    names = _wnid_names(base / "words.txt", wnids)
    return (ImageFiles(train_paths, train_y, tf), ImageFiles(val_paths, val_y, tf), names, (3, 64, 64))


def _wnid_names(words: Path, wnids: list[str]) -> list[str]:
    """Human-readable names from a ``words.txt`` (wnid<TAB>name) when present, else the wnids."""
    if not words.exists():
        return list(wnids)
    table = dict(line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line)
    return [table.get(w, w).split(",")[0].strip() for w in wnids]


def imagenet(root: Path):
    """ILSVRC2012 train/val folders (val sorted into wnid folders), Resize 256 + CenterCrop 224."""
    base = root / "imagenet"
    wnids = _wnid_folders("imagenet", base / "train")
    tf = imagenet_transform()
    return (class_folder_set("imagenet", base / "train", wnids, tf),
            class_folder_set("imagenet", base / "val", wnids, tf),
            _wnid_names(base / "words.txt", wnids), (3, 224, 224))


def imgnet100_classes(root: Path) -> list[str]:
    """The 100 wnids of ImageNet-100, read from ``<root>/imagenet100.txt``, sorted."""
    path = root / "imagenet100.txt"
    _require("imgnet100", path)
    wnids = sorted({w.strip() for w in path.read_text().split() if w.strip()})
    if len(wnids) != 100:
        raise missing("imgnet100", path, f"the class list must name 100 distinct wnids, it names {len(wnids)}")
    return wnids


def imgnet100(root: Path):
    """ImageNet-100: the listed classes of the ImageNet folders, sorted wnids, aug10 preprocessing."""
    wnids = imgnet100_classes(root)
    base = root / "imagenet"
    tf = aug10_transform()
    return (class_folder_set("imgnet100", base / "train", wnids, tf),
            class_folder_set("imgnet100", base / "val", wnids, tf),
            _wnid_names(base / "words.txt", wnids), (3, 112, 112))


def imagenet_v2(root: Path):
    """ImageNet-v2 matched-frequency: folders named by class index 0..999 (test split only)."""
    base = root / "imagenetv2-matched-frequency-format-val"
    if not base.is_dir():
        raise missing("imagenet-v2", base, "missing")
    numeric = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.name)
    bad = [p.name for p in numeric if not p.name.isdigit() or not 0 <= int(p.name) < 1000]
    if bad or not numeric:
        raise missing("imagenet-v2", base, f"class folders must be named 0..999, found {bad[:3] or 'none'}")
    paths, targets = [], []
    for p in sorted(numeric, key=lambda p: int(p.name)):
        imgs = _images_in(p)
        paths += imgs
        targets += [int(p.name)] * len(imgs)
    names = [str(i) for i in range(1000)]
    return None, ImageFiles(paths, targets, imagenet_transform()), names, (3, 224, 224)


def stylized_imagenet(root: Path):
    """Stylized-ImageNet's val folder (wnid folders; labels in sorted-wnid order, as ImageNet's)."""
    base = root / "stylized-imagenet" / "val"
    wnids = _wnid_folders("stylized-imagenet", base)
    return None, class_folder_set("stylized-imagenet", base, wnids, imagenet_transform()), wnids, (3, 224, 224)


_ROOT_PATHS = {"mnist": "MNIST/raw", "cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python",
               "cifar100coarse": "cifar-100-python", "tinyimagenet": "tiny-imagenet-200",
               "imagenet": "imagenet", "imgnet100": "imagenet100.txt",
               "imagenet-v2": "imagenetv2-matched-frequency-format-val",
               "stylized-imagenet": "stylized-imagenet/val"}


def locate(dataset: str, root: Path) -> dict:
    """Where ``dataset`` would be under ``root`` and whether something is there."""
    path = root / _ROOT_PATHS[dataset]
    return {"found": path.exists(), "where": str(path)}

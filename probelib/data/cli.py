"""``python -m probelib datasets``: which datasets are found under the data root."""

from __future__ import annotations

import argparse

import pandas as pd

from probelib.data import data_root, dataset_status


def _datasets(args: argparse.Namespace) -> int:
    rows = dataset_status(args.root)
    df = pd.DataFrame(rows)[["dataset", "found", "train", "test", "classes", "where"]]
    df[["train", "test"]] = df[["train", "test"]].astype("Int64")
    print(f"data root: {data_root(args.root).resolve()}")
    print(df.to_string(index=False))
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="list each dataset, whether it is found, and its size")
    p.add_argument("--root", default=None, help="data root (default: $PROBELIB_DATA or ./data)")
    p.set_defaults(func=_datasets)

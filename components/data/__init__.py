"""Data loaders: every format becomes one in-memory :class:`Dataset` and a ``dataset`` artifact."""

from __future__ import annotations

from pathlib import Path

from components.data import columnar
from components.data.amazon import load_amazon2018
from components.data.amazon2023 import load_amazon2023
from components.data.dataset import PAD, SPLITS, DataError, Dataset, Split
from components.data.fetch import CATALOG, catalog_entry, fetch
from components.data.minionerec import load_minionerec
from components.data.minionerec_csv import load_minionerec_csv
from components.data.recbole import load_recbole
from components.data.table import DataWarning, load_table

__all__ = [
    "CATALOG",
    "PAD",
    "SPLITS",
    "DataError",
    "DataWarning",
    "Dataset",
    "Split",
    "catalog_entry",
    "columnar",
    "fetch",
    "load_amazon2018",
    "load_amazon2023",
    "load_dataset",
    "load_minionerec",
    "load_minionerec_csv",
    "load_recbole",
    "load_table",
]


def load_dataset(data_params, raw_root: str | Path = "data/raw") -> Dataset:
    """Build the dataset that ``data:`` params describe (a :class:`~components.params.DataParams`)."""
    name = data_params.dataset
    fmt = data_params.format
    max_history = data_params.max_history
    if fmt == "auto" or max_history == 0:
        if name not in CATALOG and fmt == "auto":
            raise DataError(f"dataset {name!r} is not in the catalog {sorted(CATALOG)}: set data.format and data.path")
        entry = CATALOG.get(name)
        fmt = entry.format if fmt == "auto" else fmt
        max_history = max_history or (entry.max_history if entry else 10)
    path = Path(raw_root) / name
    if not path.is_dir():
        raise DataError(f"{path}: no raw data; run `genrec data fetch {name}` first")
    if fmt == "minionerec":
        return load_minionerec(path, name=name, max_history=max_history)
    if fmt == "minionerec-csv":
        return load_minionerec_csv(path, name=name, max_history=max_history)
    if fmt == "recbole":
        return load_recbole(path, name=name, max_history=max_history)
    if fmt in ("amazon2018", "amazon2023"):
        return (load_amazon2018 if fmt == "amazon2018" else load_amazon2023)(
            path,
            name=name,
            max_history=max_history,
            k=data_params.k_core,
            start_time=data_params.start_time,
            end_time=data_params.end_time,
            max_title_chars=data_params.max_title_chars,
            split_ratio=tuple(data_params.split_ratio),
            engine=data_params.engine,  # polars | python | auto (GENREC_DATA_ENGINE wins)
        )
    if fmt == "table":
        return load_table(
            path,
            name=name,
            max_history=max_history,
            k=data_params.k_core,
            split=data_params.split,
            split_ratio=tuple(data_params.split_ratio),
            user_col=data_params.user_col,
            item_col=data_params.item_col,
            time_col=data_params.time_col,
            text_cols=list(data_params.text_cols),
            interactions_file=data_params.interactions_file,
            items_file=data_params.items_file,
        )
    raise DataError(f"unknown data.format {fmt!r}")

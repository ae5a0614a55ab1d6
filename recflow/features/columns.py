"""A few rows of named columns without pandas: the user features of one model-server call.

The model server reads a batch of a few users per call and hands their
features to the stack. As a pandas DataFrame, building it and the first read
of each of its 14 columns cost about 0.45 ms for 8 users (pandas 2.3: each
first read builds a Series), more than the encoders' arithmetic on them. The
encoders read a frame through the part of the DataFrame interface this class
has (``columns``, ``frame[name]``, ``name in frame``, ``len(frame)``), so
training's DataFrames and serving's columns go through the same lines.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


class Columns:
    """Equal-length columns by name: numbers as numpy arrays, anything else (strings, lists) as lists."""

    def __init__(self, data: Mapping[str, np.ndarray | list]) -> None:
        lengths = {name: len(values) for name, values in data.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"columns of different lengths: {lengths}")
        self._data = dict(data)
        self._rows = next(iter(lengths.values()), 0)

    @classmethod
    def from_pandas(cls, frame: pd.DataFrame) -> Columns:
        """A frame's columns: numpy-typed numbers as arrays, the rest as lists of their values."""
        return cls(
            {
                name: column.to_numpy() if isinstance(column.dtype, np.dtype) and column.dtype.kind in "biufM"
                else column.tolist()
                for name, column in frame.items()
            }
        )  # fmt: skip

    @property
    def columns(self) -> list[str]:
        return list(self._data)

    def __getitem__(self, name: str) -> np.ndarray | list:
        return self._data[name]

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __len__(self) -> int:
        """Rows, as ``len`` of a DataFrame."""
        return self._rows

    def take(self, rows: np.ndarray) -> Columns:
        """The rows at these positions, in this order."""
        return Columns(
            {
                name: values[rows] if isinstance(values, np.ndarray) else [values[row] for row in rows.tolist()]
                for name, values in self._data.items()
            }
        )

    def to_pandas(self) -> pd.DataFrame:
        """The same columns as a DataFrame (what Feast's on-demand transformations read)."""
        return pd.DataFrame(self._data, copy=False)

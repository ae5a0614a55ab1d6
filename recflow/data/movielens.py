"""MovieLens ratings as a recflow dataset (``recflow data import-movielens PATH``).

The MovieLens data sets are published by GroupLens Research; when you use them, cite:
F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History
and Context. ACM Transactions on Interactive Intelligent Systems (TiiS) 5, 4,
Article 19. https://doi.org/10.1145/2827872

Supported layouts, detected from the ratings file (PATH is that file or the
directory holding it):

* ml-100k: ``u.data`` (tab-separated ``user item rating timestamp``), with
  ``u.item`` and ``u.user`` when beside it;
* ml-1m: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), with
  ``movies.dat`` and ``users.dat`` when beside it (ml-10m shares the layout,
  without users.dat);
* ml-latest-small, ml-latest, ml-20m, ml-25m: ``ratings.csv``
  (``userId,movieId,rating,timestamp``), with ``movies.csv`` when beside it.

Mapping to the canonical schema, and why:

* Every rating is a positive interaction (the user chose to watch and rate):
  ``clicked=True``, ``dwell_seconds=0.0`` (MovieLens has no dwell time),
  ``rating`` = the stars. ``event_id`` is ``"{user}-{item}-{timestamp}"``, so a
  re-import gives the same ids.
* MovieLens records no creation date for movies or signup date for users, so an
  item's ``created_at`` is its first rating time and a user's ``signup_at`` is
  their first rating time: the earliest moment the item/user is known to exist,
  which keeps "no event before its item existed" true by construction. Movies
  or users nobody rated have no known time and carry no signal, so they are
  left out.
* ``category`` is the first listed genre ("unknown" when there is none);
  ``segment`` is the occupation where the release has one (ml-100k: its name;
  ml-1m: the name of its code), else "unknown"; ``age`` is the age where known
  (ml-1m gives an age band's lower bound, 1 meaning "under 18").

Every column is read as a string: converting and checking values is
:func:`recflow.data.validation.validate_dataset`'s job, so a corrupted value
is reported there with its row instead of crashing the reader.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from recflow.data.dataset import Dataset, write_dataset
from recflow.data.schema import UNKNOWN
from recflow.data.validation import DataValidationError, validate_dataset

ML_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
# Occupation codes of ml-1m's users.dat, as listed in its README.
ML_1M_OCCUPATIONS = {
    "0": "other", "1": "academic/educator", "2": "artist", "3": "clerical/admin", "4": "college/grad student",
    "5": "customer service", "6": "doctor/health care", "7": "executive/managerial", "8": "farmer",
    "9": "homemaker", "10": "K-12 student", "11": "lawyer", "12": "programmer", "13": "retired",
    "14": "sales/marketing", "15": "scientist", "16": "self-employed", "17": "technician/engineer",
    "18": "tradesman/craftsman", "19": "unemployed", "20": "writer",
}
NO_GENRES = "(no genres listed)"
RATINGS_FILES = {"u.data": "ml-100k", "ratings.dat": "ml-1m", "ratings.csv": "ml-latest"}
SUPPORTED = (
    "u.data (ml-100k), ratings.dat (ml-1m, ml-10m), "
    "ratings.csv (ml-latest-small, ml-latest, ml-20m, ml-25m), or a directory containing one of them"
)
# A one-character stand-in for the "::" separator of the ml-1m files: pandas' fast C parser
# only splits on single characters. The ASCII unit separator never occurs in the data.
UNIT_SEPARATOR = "\x1f"
CSV_RATING_COLUMNS = {"userId": "user", "movieId": "item", "rating": "rating", "timestamp": "timestamp"}


class RawTables(NamedTuple):
    """Raw canonical frames (canonical column names, string values) and the detected format."""

    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    format: str


def find_ratings(path: str | Path) -> tuple[Path, str]:
    """The ratings file at or in ``path``, and its format name."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory; expected {SUPPORTED}")
    if path.is_dir():
        for name, format_name in RATINGS_FILES.items():
            if (path / name).is_file():
                return path / name, format_name
        raise ValueError(f"{path}: no MovieLens ratings file in this directory; expected {SUPPORTED}")
    if path.name in RATINGS_FILES:
        return path, RATINGS_FILES[path.name]
    raise ValueError(f"{path}: not a supported MovieLens file; expected {SUPPORTED}")


def read_movielens(path: str | Path) -> RawTables:
    """Read a MovieLens release into raw canonical frames (validate them before use)."""
    ratings_path, format_name = find_ratings(path)
    folder = ratings_path.parent
    if format_name == "ml-100k":
        ratings = _read_delimited(ratings_path, "\t", ["user", "item", "rating", "timestamp"])
        movies = _read_100k_items(folder / "u.item")
        people = _read_100k_users(folder / "u.user")
    elif format_name == "ml-1m":
        ratings = _read_double_colon(ratings_path, ["user", "item", "rating", "timestamp"])
        movies = _read_1m_items(folder / "movies.dat")
        people = _read_1m_users(folder / "users.dat")
    else:
        ratings = _read_csv_ratings(ratings_path)
        movies = _read_latest_items(folder / "movies.csv")
        people = None
    events = _events(ratings)
    first_seen = pd.to_numeric(events["event_timestamp"], errors="coerce")
    items = _with_first_time(movies, events["item_id"], first_seen, "item_id", "created_at")
    users = _with_first_time(people, events["user_id"], first_seen, "user_id", "signup_at")
    if movies is None:
        items = items.assign(category=UNKNOWN, title=None)
    if people is None:
        users = users.assign(segment=UNKNOWN, age=None)
    return RawTables(
        events,
        items[["item_id", "category", "created_at", "title"]],
        users[["user_id", "signup_at", "segment", "age"]],
        format_name,
    )


def import_movielens(path: str | Path, out_dir: str | Path, overwrite: bool = False) -> Dataset:
    """Read, validate and write a MovieLens release as a dataset directory.

    Raises :class:`~recflow.data.validation.DataValidationError` (and writes
    nothing) when the files do not validate.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        # Checked before reading: a large release takes a while to read and validate.
        raise FileExistsError(f"{out_dir} already exists (pass overwrite=True to replace it)")
    raw = read_movielens(path)
    report, clean = validate_dataset(raw.events, raw.items, raw.users)
    if clean is None:
        raise DataValidationError(report)
    manifest = {"source": "movielens", "format": raw.format, "input": str(path)}
    return write_dataset(out_dir, clean.events, clean.items, clean.users, manifest=manifest, overwrite=overwrite)


# --- readers: every column as a string -------------------------------------------------------


def _read(source: Path | io.StringIO, where: Path, **options) -> pd.DataFrame:
    """pandas' C parser with every value a string ("" is the only null marker, so a
    corrupted "nan" or "NA" reaches validation as the text it is).

    An undecodable byte becomes U+FFFD (validation reports it where it matters); an
    empty file is an empty table (validation reports it); a line with too many fields
    cannot be mapped to columns at all and fails here, naming the file and line.
    """
    try:
        return pd.read_csv(
            source, dtype=str, keep_default_na=False, na_values=[""], encoding_errors="replace", engine="c", **options
        )
    except pd.errors.EmptyDataError:
        return pd.DataFrame({name: pd.Series(dtype=str) for name in options.get("names", [])})
    except pd.errors.ParserError as error:
        raise ValueError(f"{where}: {error}") from error


def _read_delimited(path: Path, sep: str, names: list[str]) -> pd.DataFrame:
    """A headerless ml-100k file (latin-1, like every file of the 100k and 1m releases)."""
    return _read(path, path, sep=sep, header=None, names=names, encoding="latin-1", quoting=csv.QUOTE_NONE)


def _read_double_colon(path: Path, names: list[str]) -> pd.DataFrame:
    """A ``::``-separated ml-1m file, through the C parser (the python engine is many times slower)."""
    text = path.read_text(encoding="latin-1").replace("::", UNIT_SEPARATOR)
    return _read(io.StringIO(text), path, sep=UNIT_SEPARATOR, header=None, names=names, quoting=csv.QUOTE_NONE)


def _read_with_header(path: Path, header: list[str]) -> pd.DataFrame:
    """A CSV file of ml-latest and its relatives, which must have (at least) ``header``.

    A missing column leaves nothing to map the file from, so it fails here rather than in validation.
    """
    frame = _read(path, path)
    missing = [name for name in header if name not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; the header must be {','.join(header)}")
    return frame


def _read_csv_ratings(path: Path) -> pd.DataFrame:
    ratings = _read_with_header(path, list(CSV_RATING_COLUMNS))
    return ratings[list(CSV_RATING_COLUMNS)].rename(columns=CSV_RATING_COLUMNS)


def _read_100k_items(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    names = ["item_id", "title", "release_date", "video_release_date", "url", *ML_100K_GENRES]
    movies = _read_delimited(path, "|", names)
    flags = movies[list(ML_100K_GENRES)].eq("1").to_numpy()
    genres = pd.Series(ML_100K_GENRES).to_numpy()[flags.argmax(axis=1)]
    category = pd.Series(genres, index=movies.index).where(flags.any(axis=1), UNKNOWN)
    return movies[["item_id", "title"]].assign(category=category)


def _read_1m_items(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    movies = _read_double_colon(path, ["item_id", "title", "genres"])
    return movies[["item_id", "title"]].assign(category=_first_genre(movies["genres"]))


def _read_latest_items(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    movies = _read_with_header(path, ["movieId", "title", "genres"])
    return movies.rename(columns={"movieId": "item_id"})[["item_id", "title"]].assign(
        category=_first_genre(movies["genres"])
    )


def _first_genre(genres: pd.Series) -> pd.Series:
    first = genres.str.split("|", n=1).str[0].str.strip()
    return first.where(first.notna() & (first != "") & (first != NO_GENRES), UNKNOWN)


def _read_100k_users(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    people = _read_delimited(path, "|", ["user_id", "age", "gender", "occupation", "zip"])
    return people.assign(segment=people["occupation"].fillna(UNKNOWN))[["user_id", "segment", "age"]]


def _read_1m_users(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    people = _read_double_colon(path, ["user_id", "gender", "age", "occupation", "zip"])
    code = people["occupation"].str.strip()
    segment = code.map(ML_1M_OCCUPATIONS).fillna(code).fillna(UNKNOWN)
    return people.assign(segment=segment)[["user_id", "segment", "age"]]


# --- mapping -----------------------------------------------------------------------------------


def _events(ratings: pd.DataFrame) -> pd.DataFrame:
    """One positive interaction per rating, values still strings."""
    return pd.DataFrame(
        {
            "event_id": ratings["user"] + "-" + ratings["item"] + "-" + ratings["timestamp"],
            "user_id": ratings["user"],
            "item_id": ratings["item"],
            "event_timestamp": ratings["timestamp"],
            "clicked": True,
            "dwell_seconds": 0.0,
            "rating": ratings["rating"],
        }
    )


def _with_first_time(
    table: pd.DataFrame | None, event_ids: pd.Series, event_seconds: pd.Series, id_column: str, time_column: str
) -> pd.DataFrame:
    """The rows of ``table`` (or, without one, every id in the events) that occur in the
    events, stamped with their first event time in epoch seconds.

    Rows keep the file's order (and its duplicates, for validation to report); a
    corrupted timestamp is ignored here and reported on its event.
    """
    first = event_seconds.groupby(event_ids, sort=False).min()
    if table is None:
        return pd.DataFrame({id_column: first.index.to_numpy(), time_column: first.to_numpy()})
    rated = table[table[id_column].isin(first.index)].reset_index(drop=True)
    return rated.assign(**{time_column: rated[id_column].map(first)})

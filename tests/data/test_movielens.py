"""MovieLens readers: format detection, mapping to the canonical schema, import and its gate.

Every test writes its own small files in the three layouts; only the last test
reads the real ml-latest-small, when the shared data directory is present.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from recflow.data.movielens import ML_100K_GENRES, import_movielens, read_movielens
from recflow.data.validation import DataValidationError, validate_dataset

REAL_ML_LATEST_SMALL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "movielens-latest-small"
T0 = 881_250_949
CHILDRENS = "Children's"

# (user, item, rating, timestamp); item 3 is rated by nobody, user 9 rates nothing.
RATINGS = [
    (1, 10, "4", T0 + 50),
    (1, 20, "3", T0 + 10),
    (2, 10, "5", T0 + 20),
    (2, 30, "1", T0 + 30),
    (3, 20, "2", T0 + 40),
    (3, 10, "4", T0 + 5),
]
HALF_STAR_RATINGS = [(u, i, "3.5" if r == "3" else f"{r}.0", t) for u, i, r, t in RATINGS]


def genre_flags(*genres: str) -> str:
    return "|".join("1" if genre in genres else "0" for genre in ML_100K_GENRES)


def write_ml_100k(folder: Path, items: bool = True, users: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    if items:
        lines = [
            f"10|Café Society (1995)|01-Jan-1995||http://x|{genre_flags('Comedy', 'Drama')}",
            f"20|Heat (1995)|01-Jan-1995||http://y|{genre_flags()}",
            f"30|Toy Story (1995)|01-Jan-1995||http://z|{genre_flags('Animation', CHILDRENS)}",
            f"3|Never Rated (1990)|01-Jan-1990||http://w|{genre_flags('Action')}",
        ]
        (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    if users:
        lines = ["1|24|M|technician|85711", "2|53|F|other|94043", "3|23|M|writer|32067", "9|33|F|none|15213"]
        (folder / "u.user").write_text("\n".join(lines) + "\n")
    return folder


def write_ml_1m(folder: Path, items: bool = True, users: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in RATINGS))
    if items:
        lines = [
            "10::Café Society (1995)::Comedy|Drama",
            "20::Heat (1995)::Action|Crime|Thriller",
            "30::Toy Story (1995)::Animation|Children's|Comedy",
            "3::Never Rated (1990)::Action",
        ]
        (folder / "movies.dat").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    if users:
        lines = ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::99::55117"]
        (folder / "users.dat").write_text("\n".join(lines) + "\n")
    return folder


def write_ml_latest(folder: Path, items: bool = True, ratings=HALF_STAR_RATINGS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in ratings)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + rows)
    if items:
        (folder / "movies.csv").write_text(
            "movieId,title,genres\n"
            '10,"American President, The (1995)",Comedy|Drama|Romance\n'
            "20,Heat (1995),Action|Crime|Thriller\n"
            "30,Some Documentary (2016),(no genres listed)\n"
            "3,Never Rated (1990),Action\n"
        )
    return folder


WRITERS = {"ml-100k": write_ml_100k, "ml-1m": write_ml_1m, "ml-latest": write_ml_latest}
RATINGS_FILE = {"ml-100k": "u.data", "ml-1m": "ratings.dat", "ml-latest": "ratings.csv"}


def by_id(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    return frame.set_index(column)


@pytest.mark.parametrize("format_name", list(WRITERS))
@pytest.mark.parametrize("point_at", ["directory", "file"])
def test_detects_format_from_directory_or_file(tmp_path, format_name, point_at):
    folder = WRITERS[format_name](tmp_path / "data")
    path = folder if point_at == "directory" else folder / RATINGS_FILE[format_name]

    raw = read_movielens(path)

    assert raw.format == format_name
    assert len(raw.events) == len(RATINGS)


@pytest.mark.parametrize("format_name", list(WRITERS))
def test_events_mapping_is_canonical_and_raw(tmp_path, format_name):
    raw = read_movielens(WRITERS[format_name](tmp_path))
    events = raw.events

    assert list(events.columns) == [
        "event_id", "user_id", "item_id", "event_timestamp", "clicked", "dwell_seconds", "rating",
    ]
    assert events["event_id"].tolist()[0] == f"1-10-{T0 + 50}"
    assert events["user_id"].tolist() == ["1", "1", "2", "2", "3", "3"]
    assert events["event_timestamp"].tolist()[1] == str(T0 + 10)  # as given: validation converts
    assert events["clicked"].all() and (events["dwell_seconds"] == 0.0).all()
    for column in ("event_id", "user_id", "item_id", "event_timestamp", "rating"):
        assert events[column].map(type).eq(str).all(), column

    report, clean = validate_dataset(raw.events, raw.items, raw.users)
    assert report.ok, report.to_markdown()
    assert str(clean.events["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert clean.events["rating"].dtype == "float64"


@pytest.mark.parametrize("format_name", list(WRITERS))
def test_items_beside_ratings(tmp_path, format_name):
    raw = read_movielens(WRITERS[format_name](tmp_path))
    items = by_id(raw.items, "item_id")

    # Never-rated movies have no known creation time: left out.
    assert sorted(items.index) == ["10", "20", "30"]
    # created_at is the first rating's time, in epoch seconds as read.
    assert items.loc["10", "created_at"] == T0 + 5 and items.loc["20", "created_at"] == T0 + 10
    assert items.loc["10", "title"].startswith(("Café Society", "American President, The"))
    expected = {
        "ml-100k": ["Comedy", "unknown", "Animation"],
        "ml-1m": ["Comedy", "Action", "Animation"],
        "ml-latest": ["Comedy", "Action", "unknown"],
    }[format_name]
    assert items.loc[["10", "20", "30"], "category"].tolist() == expected


def test_ml_100k_users_have_occupation_and_age(tmp_path):
    raw = read_movielens(write_ml_100k(tmp_path))
    users = by_id(raw.users, "user_id")

    assert sorted(users.index) == ["1", "2", "3"]  # user 9 never rated
    assert users.loc[["1", "2", "3"], "segment"].tolist() == ["technician", "other", "writer"]
    assert users.loc[["1", "2", "3"], "age"].tolist() == ["24", "53", "23"]
    assert users.loc["3", "signup_at"] == T0 + 5


def test_ml_1m_users_have_occupation_names(tmp_path):
    raw = read_movielens(write_ml_1m(tmp_path))
    users = by_id(raw.users, "user_id")

    # Code 99 is not in the README's list: kept as the code itself.
    assert users.loc[["1", "2", "3"], "segment"].tolist() == ["K-12 student", "self-employed", "99"]
    _, clean = validate_dataset(raw.events, raw.items, raw.users)
    assert str(clean.users["age"].dtype) == "Int32"
    assert sorted(clean.users["age"].tolist()) == [1, 25, 56]


def test_ml_latest_users_are_derived_from_ratings(tmp_path):
    raw = read_movielens(write_ml_latest(tmp_path))
    users = by_id(raw.users, "user_id")

    assert sorted(users.index) == ["1", "2", "3"]
    assert (users["segment"] == "unknown").all() and users["age"].isna().all()
    assert users.loc["1", "signup_at"] == T0 + 10
    assert raw.events["rating"].tolist()[1] == "3.5"


@pytest.mark.parametrize("format_name", list(WRITERS))
def test_ratings_alone_derive_items_and_users(tmp_path, format_name):
    writer = WRITERS[format_name]
    folder = writer(tmp_path, items=False) if format_name == "ml-latest" else writer(tmp_path, items=False, users=False)

    raw = read_movielens(folder)

    assert sorted(raw.items["item_id"]) == ["10", "20", "30"]
    assert (raw.items["category"] == "unknown").all() and raw.items["title"].isna().all()
    assert sorted(raw.users["user_id"]) == ["1", "2", "3"]
    assert (raw.users["segment"] == "unknown").all()
    report, _ = validate_dataset(raw.events, raw.items, raw.users)
    assert report.ok, report.to_markdown()


def test_unsupported_file_names_the_path_and_the_supported_files(tmp_path):
    other = tmp_path / "ratings.json"
    other.write_text("{}")

    with pytest.raises(ValueError) as raised:
        read_movielens(other)
    for expected in (str(other), "u.data", "ratings.dat", "ratings.csv"):
        assert expected in str(raised.value)
    with pytest.raises(ValueError, match="no MovieLens ratings file"):
        read_movielens(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        read_movielens(tmp_path / "missing")


def test_csv_without_the_expected_header_is_refused(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating\n1,10,4\n")

    with pytest.raises(ValueError, match="missing column.*timestamp"):
        read_movielens(tmp_path)
    write_ml_latest(tmp_path)
    (tmp_path / "movies.csv").write_text("movieId,title\n10,Heat (1995)\n")
    with pytest.raises(ValueError, match="movies.csv: missing column.*genres"):
        read_movielens(tmp_path)


def test_undecodable_bytes_reach_validation_instead_of_crashing_the_reader(tmp_path):
    folder = write_ml_latest(tmp_path)
    with (folder / "ratings.csv").open("ab") as out:
        out.write(b"4,10,4.0,88125\xff0999\n")

    raw = read_movielens(folder)
    report, _ = validate_dataset(raw.events, raw.items, raw.users)

    problem = next(p for p in report.problems if p.rule == "type")
    assert (problem.column, problem.rows) == ("event_timestamp", (len(RATINGS),))


def test_line_with_extra_fields_names_the_file(tmp_path):
    folder = write_ml_1m(tmp_path)
    with (folder / "ratings.dat").open("a") as out:
        out.write("4::10::3::881250999::oops\n")

    with pytest.raises(ValueError, match="ratings.dat"):
        read_movielens(folder)


def test_import_writes_a_dataset(tmp_path):
    source = write_ml_100k(tmp_path / "ml-100k")

    dataset = import_movielens(source, tmp_path / "out")

    manifest = dataset.manifest
    assert (manifest["source"], manifest["format"], manifest["input"]) == ("movielens", "ml-100k", str(source))
    assert (manifest["num_events"], manifest["num_items"], manifest["num_users"]) == (6, 3, 3)
    events = dataset.read_events()
    assert len(events) == 6 and events["clicked"].all()
    assert sorted(events["rating"].tolist()) == [1.0, 2.0, 3.0, 4.0, 4.0, 5.0]
    assert dataset.read_users().set_index("user_id").loc["1", "segment"] == "technician"
    with pytest.raises(FileExistsError):
        import_movielens(source, tmp_path / "out")


def test_corrupted_file_fails_import_and_writes_nothing(tmp_path):
    corrupted = [*HALF_STAR_RATINGS[:3], (4, 10, "4.0", "abc"), (5, 20, "9.0", T0), (6, 99, "3.0", -5)]
    source = write_ml_latest(tmp_path / "ml-latest-small", ratings=corrupted)
    out = tmp_path / "out" / "movielens"

    with pytest.raises(DataValidationError) as raised:
        import_movielens(source, out)

    message = str(raised.value)
    assert "events.event_timestamp: 1 row has a value that is not a timestamp" in message and "row 3" in message
    assert "events.rating: 1 row has a rating outside [0.5, 5.0] (row 4; e.g. '9.0')" in message
    assert "events.item_id: 1 row has an item_id that is not in items (row 5; e.g. '99')" in message
    assert {p.rule for p in raised.value.report.problems} >= {"type", "rating_out_of_range", "unknown_item"}
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_real_ml_latest_small_imports_and_validates(tmp_path, record_property):
    if not REAL_ML_LATEST_SMALL.is_dir():
        pytest.skip("../shared/data/movielens-latest-small not present")

    started = time.perf_counter()
    raw = read_movielens(REAL_ML_LATEST_SMALL / "ratings.csv")
    report, _ = validate_dataset(raw.events, raw.items, raw.users)
    seconds = time.perf_counter() - started
    record_property("read_and_validate_seconds", round(seconds, 3))

    assert raw.format == "ml-latest"
    assert report.ok, report.to_markdown()
    assert report.counts["events"] == 100836
    assert report.counts["users"] == 610
    assert seconds < 30, f"reading and validating took {seconds:.1f}s"

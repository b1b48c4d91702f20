import json
from pathlib import Path

import pytest

from vsr_model.data import AnnotationError, Moment, read_moments, write_tvr_jsonl
from vsr_model.data.readers import didemo_consensus

FIG_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "verified-fig"
if not FIG_DIR.is_dir():
    FIG_DIR = Path("/work/shared/data/verified-fig")


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


FIG_ROW = {
    "video": "V1",
    "time": [1.5, 4.0],
    "desc_id": 7,
    "duration": 10.0,
    "cog_desc": "c",
    "fig_desc": "a man opens a door",
    "fig_desc_score": 0.5,
}


def test_fig_reader_maps_fields(tmp_path):
    path = write_lines(tmp_path / "charades_fig_test.jsonl", [FIG_ROW])
    (m,) = read_moments(path).moments
    assert m == Moment("charades_fig", "test", "7", "a man opens a door", "V1", 1.5, 4.0, 10.0)
    assert m.extra == {"cog_desc": "c", "fig_desc_score": 0.5}


def test_malformed_rows_name_file_and_line(tmp_path):
    rows = [FIG_ROW, {**FIG_ROW, "desc_id": 8, "time": [5.0, 2.0]}]
    path = write_lines(tmp_path / "x_test.jsonl", rows)
    with pytest.raises(AnnotationError, match=r"x_test.jsonl:2: .*start <= end"):
        read_moments(path, "fig")


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "invalid JSON"),
        (
            json.dumps({k: v for k, v in FIG_ROW.items() if k != "fig_desc"} | {"desc_id": 9}),
            "missing field 'fig_desc'",
        ),
        (json.dumps(FIG_ROW | {"desc_id": 9, "time": [1.0]}), r"\[start, end\] pair"),
        (json.dumps(FIG_ROW | {"desc_id": 9, "time": ["a", 2]}), "must be a number"),
        (json.dumps(FIG_ROW | {"desc_id": 9, "time": [float("nan"), 2]}), "finite"),
        (json.dumps(FIG_ROW), "duplicate query id '7'"),
        ("[1, 2]", "expected a JSON object"),
        (
            json.dumps(FIG_ROW | {"desc_id": None}),
            "query id must be a non-empty string or an integer, got None",
        ),
        (json.dumps(FIG_ROW | {"desc_id": True}), "query id must be"),
    ],
)
def test_each_kind_of_bad_row_is_reported_or_counted(tmp_path, bad_line, message):
    path = write_lines(tmp_path / "d_test.jsonl", [FIG_ROW, "", bad_line, FIG_ROW | {"desc_id": 10}])
    with pytest.raises(AnnotationError, match=rf"d_test.jsonl:3: .*{message}"):
        read_moments(path, "fig")
    result = read_moments(path, "fig", skip_malformed=True)
    assert [m.query_id for m in result.moments] == ["7", "10"]
    assert len(result.skipped) == 1 and result.skipped[0].location.endswith("d_test.jsonl:3")


@pytest.mark.parametrize("fmt", ["fig", "tvr"])
def test_bytes_that_are_not_utf8_make_their_row_malformed(tmp_path, fmt):
    row = (
        FIG_ROW
        if fmt == "fig"
        else {"desc_id": 7, "desc": "a door", "vid_name": "V1", "ts": [1, 2], "duration": 9}
    )
    lines = [
        json.dumps(row).encode(),
        b'{"desc_id": 8, "fig_desc": "caf\xe9 \xff"}',
        json.dumps(row | {"desc_id": 10}).encode(),
    ]
    path = tmp_path / f"{fmt}_test.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(
        AnnotationError, match=rf"{fmt}_test.jsonl:2: invalid UTF-8 .* at byte 31 of the line"
    ):
        read_moments(path, fmt)
    result = read_moments(path, fmt, skip_malformed=True)
    assert [m.query_id for m in result.moments] == ["7", "10"]
    assert result.skipped[0].location.endswith(f"{fmt}_test.jsonl:2") and "UTF-8" in result.skipped[0].reason
    # The format is still inferred from a file with a bad line.
    assert read_moments(path, skip_malformed=True).moments[0].query_id == "7"


def test_bytes_that_are_not_utf8_in_txt_and_json_formats(tmp_path):
    path = tmp_path / "charades_sta_test.txt"
    path.write_bytes(b"AO8RW 0.0 6.9##a person\nY6R7T 3.1 9.0##caf\xe9\nZZ 1 2##fine\n")
    with pytest.raises(AnnotationError, match=r"charades_sta_test.txt:2: invalid UTF-8"):
        read_moments(path)
    assert [m.video_id for m in read_moments(path, skip_malformed=True).moments] == ["AO8RW", "ZZ"]
    # A JSON document cannot be parsed around a bad byte: the whole file is refused, naming the line.
    path = tmp_path / "anet_val.json"
    path.write_bytes(b'{"v1": {"duration": 5,\n "sentences": ["caf\xe9"], "timestamps": [[0, 1]]}}')
    for skip in (False, True):
        with pytest.raises(AnnotationError, match=r"anet_val.json:2: invalid UTF-8"):
            read_moments(path, "activitynet", skip_malformed=skip)


def test_end_past_duration_is_clipped_and_counted_or_rejected(tmp_path):
    path = write_lines(tmp_path / "c_test.jsonl", [FIG_ROW | {"time": [8.0, 10.7]}])
    result = read_moments(path)
    assert result.clipped == 1
    assert result.moments[0].end == 10.0 and result.moments[0].extra["end_unclipped"] == 10.7
    with pytest.raises(AnnotationError, match="does not fit in duration"):
        read_moments(path, clip_to_duration=False)


def test_charades_sta_reader(tmp_path):
    path = tmp_path / "charades_sta_train.txt"
    path.write_text(
        "AO8RW 0.0 6.9##a person is putting a book on a shelf.\nY6R7T 3.1 9.0##person opens the door\n"
    )
    result = read_moments(path)
    assert [(m.video_id, m.start, m.end, m.duration) for m in result.moments] == [
        ("AO8RW", 0.0, 6.9, None),
        ("Y6R7T", 3.1, 9.0, None),
    ]
    assert result.moments[0].query == "a person is putting a book on a shelf."
    with_dur = read_moments(path, durations={"AO8RW": 30.0, "Y6R7T": 8.0})
    assert with_dur.moments[1].end == 8.0 and with_dur.clipped == 1
    with pytest.raises(AnnotationError, match=r"charades_sta_train.txt:1: no duration known"):
        read_moments(path, durations={"Y6R7T": 8.0})
    path.write_text("AO8RW 0.0 6.9 a person without separator\n")
    with pytest.raises(AnnotationError, match=r"charades_sta_train.txt:1: expected 'VIDEO START END##query'"):
        read_moments(path)


def test_activitynet_reader(tmp_path):
    path = tmp_path / "anet_val.json"
    path.write_text(
        json.dumps(
            {"v_a": {"duration": 20.0, "timestamps": [[0, 5.5], [4, 21]], "sentences": ["one.", " two. "]}}
        )
    )
    result = read_moments(path)
    assert [(m.query_id, m.query, m.start, m.end) for m in result.moments] == [
        ("v_a#0", "one.", 0.0, 5.5),
        ("v_a#1", "two.", 4.0, 20.0),
    ]
    path.write_text(
        json.dumps({"v_a": {"duration": 20.0, "timestamps": [[0, 5.5]], "sentences": ["one.", "two."]}})
    )
    with pytest.raises(AnnotationError, match=r"anet_val.json:\['v_a'\]: 1 timestamps for 2 sentences"):
        read_moments(path)
    path.write_text('{"v_a": {"duration": 20.0,\n "timestamps": [[0, 5.5]], }')
    with pytest.raises(AnnotationError, match=r"anet_val.json:2: invalid JSON"):
        read_moments(path)


def test_didemo_reader_takes_annotator_consensus(tmp_path):
    rows = [
        {
            "annotation_id": 1,
            "description": "dog runs",
            "video": "vid1",
            "times": [[1, 1], [2, 3], [2, 3], [1, 1]],
        },
        {"annotation_id": 2, "description": "cat", "video": "vid1", "times": [[0, 5]]},
    ]
    path = tmp_path / "didemo_test.json"
    path.write_text(json.dumps(rows))
    result = read_moments(path, durations={"vid1": 28.0})
    a, b = result.moments
    assert (a.start, a.end) == (5.0, 10.0)  # tie between [1,1] and [2,3]: the first listed wins
    assert (b.start, b.end, b.duration) == (0.0, 28.0, 28.0) and result.clipped == 1
    assert a.extra["annotator_times"] == rows[0]["times"]
    assert didemo_consensus([[0, 0], [2, 3], [2, 3]]) == (2, 3)
    path.write_text(json.dumps([{**rows[0], "times": [[3, 1]]}]))
    with pytest.raises(AnnotationError, match=r"didemo_test.json:\[0\]: chunk span"):
        read_moments(path)


def test_tvr_roundtrip(tmp_path):
    moments = [
        Moment("synth", "test", "q1", "a red square appears", "vid_3", 1.25, 3.5, 8.0, {"template": 2})
    ]
    path = write_tvr_jsonl(tmp_path / "synth_test.jsonl", moments)
    back = read_moments(path)
    assert back.moments == moments and back.moments[0].extra == {"template": 2}


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_moments(tmp_path / "none.jsonl")
    p = tmp_path / "x.csv"
    p.write_text("a,b\n")
    with pytest.raises(AnnotationError, match="cannot tell the annotation format"):
        read_moments(p)
    with pytest.raises(ValueError, match="unknown annotation format"):
        read_moments(p, "csv")


@pytest.mark.parametrize(
    "name, queries, videos",
    [
        ("charades_fig_test.jsonl", 3720, 1334),
        ("didemo_fig_test.jsonl", 4013, 1002),
        ("didemo_fig_val.jsonl", 4175, 1064),
    ],
)
def test_real_verified_fig_files(name, queries, videos):
    path = FIG_DIR / name
    if not path.is_file():
        pytest.skip(f"VERIFIED FIG annotations not found at {path}")
    result = read_moments(path)
    assert len(result.moments) == queries and not result.skipped
    assert len({m.video_id for m in result.moments}) == videos
    assert all(0 <= m.start <= m.end <= m.duration for m in result.moments)


def test_real_charades_train_has_one_bad_row_reported_with_its_line():
    path = FIG_DIR / "charades_fig_train.jsonl"
    if not path.is_file():
        pytest.skip(f"VERIFIED FIG annotations not found at {path}")
    with pytest.raises(AnnotationError, match=r"charades_fig_train.jsonl:8500: .*duration 6.29"):
        read_moments(path)
    result = read_moments(path, skip_malformed=True)
    assert len(result.moments) == 12407 and len(result.skipped) == 1

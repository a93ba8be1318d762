"""Review history, image resolution and export-labels on a real SQLite file and real TIFFs."""

from __future__ import annotations

import csv
import errno
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from image_files import sample_image16, write_tiff16
from inspector.data.dataset import load_dataset
from inspector.imaging.read import file_sha256
from inspector.loop.labelset import bundle_for, export_labels, parse_bundle_rule
from inspector.loop.review import (ReviewError, latest_reviews, parse_anomalies, pending_reviews, query_reviews,
                              record_review, resolve_image)
from inspector.store.store import open_store
from tests.store_rows import record_verdict

MODEL = "ab" * 32
MODEL2 = "cd" * 32


@dataclass
class Station:
    root: Path
    capture: Path
    url: str
    files: dict[str, Path]
    sha: dict[str, str]


# name -> (relative path, verdict, p_abnormal, reason), recorded in this order (oldest first)
SCORED = {
    "e1": ("b1/lot01_e1.tif", "abnormal", 0.9, None),
    "e2": ("b1/lot01_e2.tif", "normal", 0.1, None),
    "e3": ("b2/lot02_e3.tif", "rescan", None, "blurred: variance of the Laplacian 3.0 below 9.0"),
    "e4": ("lot03_e4.tif", "abnormal", 0.7, None),
}


def build_station(tmp_path: Path) -> Station:
    """Four scored TIFFs in capture subfolders plus a duplicate of e1, written through Store's own writers."""
    capture = tmp_path / "capture"
    files, sha = {}, {}
    url = f"sqlite:///{tmp_path / 'station.db'}"
    with open_store(url) as store:
        for i, (name, (rel, verdict, p, reason)) in enumerate(SCORED.items()):
            path = write_tiff16(_mkparent(capture / rel), sample_image16(48, 32, seed=i))
            files[name], sha[name] = path, file_sha256(path)
            st = path.stat()
            assert record_verdict(store, os.fsencode(path), sha[name], st.st_size, st.st_mtime_ns, MODEL, p, verdict,
                                        reason, 0.5, "global", 0.1, 0.2) == "new"
        dup = write_tiff16(_mkparent(capture / "b2" / "copy_of_e1.tif"), sample_image16(48, 32, seed=0))
        st = dup.stat()
        assert record_verdict(store, os.fsencode(dup), sha["e1"], st.st_size, st.st_mtime_ns, MODEL, 0.9, "abnormal",
                                    None, 0.5, "global", 0.1, 0.2) == "duplicate"
        files["dup"] = dup
    return Station(tmp_path, capture, url, files, sha)


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def station(tmp_path) -> Station:
    return build_station(tmp_path)


@pytest.fixture
def store(station):
    with open_store(station.url) as s:
        yield s


def test_two_reviews_keep_both_rows_and_the_second_supersedes(station, store):
    first = record_review(store, station.sha["e1"], "normal", reviewer="bob", note="looks fine")
    second = record_review(store, station.sha["e1"], "abnormal", ["Scratches", "edge cuts"], reviewer="alice")
    assert first.previous is None and first.model_verdict == "abnormal" and first.model_sha256 == MODEL
    assert second.previous["id"] == first.id and second.previous["label"] == "normal"
    assert second.anomalies == ("scratch", "edge_cut") and second.path == str(station.files["e1"])
    rows = query_reviews(store)
    assert [r["id"] for r in rows] == [second.id, first.id]  # latest first
    newest, oldest = rows
    assert newest["supersedes"] == first.id and not newest["superseded"]
    assert oldest["superseded"] and oldest["supersedes"] is None
    assert (oldest["label"], oldest["reviewer"], oldest["note"]) == ("normal", "bob", "looks fine")  # untouched
    assert newest["anomalies"] == "scratch;edge_cut"
    assert [r["label"] for r in latest_reviews(store)] == ["abnormal"]


def test_review_keeps_the_latest_verdict_at_that_moment(station, store):
    first = record_review(store, station.sha["e2"], "normal", reviewer="bob")
    path = station.capture / "b1" / "again_e2.tif"  # the same content, rescored by a newer model
    path.write_bytes(station.files["e2"].read_bytes())
    st = path.stat()
    record_verdict(store, os.fsencode(path), station.sha["e2"], st.st_size, st.st_mtime_ns, MODEL2, 0.8, "abnormal",
                         None, 0.5, "global", 0.1, 0.2)
    second = record_review(store, station.sha["e2"], "normal", reviewer="bob")
    assert (first.model_verdict, first.model_sha256) == ("normal", MODEL)
    assert (second.model_verdict, second.model_sha256, second.p_abnormal) == ("abnormal", MODEL2, 0.8)


def test_reviewer_defaults_to_user(station, store, monkeypatch):
    monkeypatch.setenv("USER", "operator7")
    assert record_review(store, station.sha["e4"], "abnormal").reviewer == "operator7"
    monkeypatch.delenv("USER")
    monkeypatch.delenv("USERNAME", raising=False)
    assert record_review(store, station.sha["e4"], "abnormal").reviewer == "unknown"


def test_pending_oldest_first_with_rescans_and_without_duplicates(station, store):
    pending = pending_reviews(store)
    assert [r["sha256"] for r in pending] == [station.sha["e1"], station.sha["e3"], station.sha["e4"]]
    assert [r["verdict"] for r in pending] == ["abnormal", "rescan", "abnormal"]
    assert pending[1]["reason"].startswith("blurred") and pending[1]["p_abnormal"] is None
    assert pending[0]["path"] == str(station.files["e1"])  # the duplicate copy is not listed again
    record_review(store, station.sha["e3"], "normal", reviewer="bob")
    assert [r["sha256"] for r in pending_reviews(store)] == [station.sha["e1"], station.sha["e4"]]


def test_resolve_by_file_recorded_path_and_prefix(station, store):
    assert resolve_image(store, str(station.files["e2"])) == station.sha["e2"]
    assert resolve_image(store, station.sha["e3"][:8].upper()) == station.sha["e3"]
    assert resolve_image(store, station.sha["e3"]) == station.sha["e3"]
    # moved into processed/: found by its old path (gone now) and by its new one
    moved = _mkparent(station.capture / "processed" / "2026-01-02" / "lot03_e4.tif")
    os.rename(station.files["e4"], moved)
    store.record_moved(os.fsencode(station.files["e4"]), station.sha["e4"], str(moved))
    assert resolve_image(store, str(station.files["e4"])) == station.sha["e4"]
    assert resolve_image(store, str(moved)) == station.sha["e4"]


def test_resolve_errors(station, store, tmp_path):
    stranger = write_tiff16(tmp_path / "never_scored.tif", sample_image16(16, 16, seed=99))
    with pytest.raises(ReviewError) as err:
        resolve_image(store, str(stranger))
    assert str(err.value) == (f"no verdict for {stranger} (its content, sha256 {file_sha256(stranger)}, was never "
                              "scored); `inspector verdicts --path GLOB` lists scored images")
    with pytest.raises(ReviewError, match=r"^no verdict for /nowhere/x.tif; `inspector verdicts --path GLOB`"):
        resolve_image(store, "/nowhere/x.tif")
    with pytest.raises(ReviewError, match="^sha256 prefix 'abc' is too short: give at least 8 hex digits"):
        resolve_image(store, "abc")
    with pytest.raises(ReviewError, match="^no verdict for 00000000"):
        resolve_image(store, "00000000")


def test_ambiguous_prefix_lists_the_candidates(tmp_path):
    shas = ["deadbeef" + "1" * 56, "deadbeef" + "2" * 56]
    with open_store(f"sqlite:///{tmp_path / 'x.db'}") as store:
        for i, sha in enumerate(shas):
            record_verdict(store, f"/cap/{i}.tif", sha, 1, 1, MODEL, 0.9, "abnormal", None, 0.5, "global", 0.1, 0.1)
        with pytest.raises(ReviewError) as err:
            resolve_image(store, "DEADBEEF")
        assert str(err.value) == (f"sha256 prefix 'DEADBEEF' matches 2 scored images: {shas[0]} (/cap/0.tif), "
                                  f"{shas[1]} (/cap/1.tif); give more digits of the sha256")
        assert resolve_image(store, "deadbeef2") == shas[1]


def test_parse_anomalies_accepts_method_spellings_and_names_bad_ones():
    assert parse_anomalies(["Scratches", "ink entry/exit", "bubbles;scratch"]) == ("scratch", "ink_entry_exit",
                                                                                    "bubble")
    assert parse_anomalies(["scratch", "Dents", "Edge Burr, delamination;dents"]) == (
        "scratch", "dents", "edge_burr", "delamination")  # a plant's own types, normalized like load_dataset
    with pytest.raises(ReviewError) as err:
        parse_anomalies(["scratch", "edge\nburr"])
    assert str(err.value) == ("anomaly type 'edge\\nburr' contains a control character ('\\n'); an anomaly name "
                              "must be one line of visible text")
    with pytest.raises(ReviewError, match=r"^anomaly type '- /' is empty once spaces, '-', '/' and '_' are dropped"):
        parse_anomalies([" - / "])
    with pytest.raises(ReviewError, match="label 'maybe' is not normal or abnormal"):
        record_review(None, "0" * 64, "maybe")  # type: ignore[arg-type]


def read_labels(root: Path) -> dict[str, dict]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}


def test_export_subfolder_rule_round_trip(station, store, tmp_path):
    record_review(store, station.sha["e1"], "normal", reviewer="bob")
    record_review(store, station.sha["e1"], "abnormal", ["scratch", "bubble"], reviewer="alice")  # supersedes
    record_review(store, station.sha["e2"], "normal", reviewer="bob")
    record_review(store, station.sha["e3"], "abnormal", ["missing ink"], reviewer="bob")
    record_review(store, station.sha["e4"], "normal", reviewer="bob")
    # e3 was moved into processed/DATE by the daemon: its bundle still comes from the original folder
    moved = _mkparent(station.capture / "processed" / "2026-01-02" / "lot02_e3.tif")
    os.rename(station.files["e3"], moved)
    store.record_moved(os.fsencode(station.files["e3"]), station.sha["e3"], str(moved))
    out = tmp_path / "export"
    summary = export_labels(store, out, "subfolder", station.capture)
    assert summary.skipped == [] and summary.unmatched == []
    dataset = load_dataset(out)
    by_sha = {file_sha256(s.path): s for s in dataset.samples}
    assert set(by_sha) == {station.sha[k] for k in ("e1", "e2", "e3", "e4")}
    e1, e3, e4 = by_sha[station.sha["e1"]], by_sha[station.sha["e3"]], by_sha[station.sha["e4"]]
    assert (e1.bundle, e1.label, e1.anomalies) == ("b1", "abnormal", ("scratch", "bubble"))  # the latest review
    assert (e3.bundle, e3.label, e3.anomalies) == ("b2", "abnormal", ("missing_ink",))
    assert (e4.bundle, e4.label) == ("capture", "normal")
    assert e1.rel == f"b1/lot01_e1-{station.sha['e1'][:8]}.tif"
    assert os.stat(e1.path).st_ino == os.stat(station.files["e1"]).st_ino  # hard-linked on one filesystem
    assert summary.count("link") == 4
    assert sorted(dataset.bundles) == ["b1", "b2", "capture"]


def test_review_with_a_new_anomaly_type_is_recorded_and_exported(station, store, tmp_path):
    from inspector.data.datasetcheck import check_dataset

    rec = record_review(store, station.sha["e1"], "abnormal", ["Edge Burr", "scratches"], reviewer="alice")
    assert rec.anomalies == ("edge_burr", "scratch")
    assert query_reviews(store)[0]["anomalies"] == "edge_burr;scratch"
    record_review(store, station.sha["e2"], "normal", ["delamination"], reviewer="alice")
    out = tmp_path / "export"
    summary = export_labels(store, out, "subfolder", station.capture)
    assert summary.skipped == []
    assert sorted(r["anomaly"] for r in read_labels(out).values()) == ["delamination", "edge_burr;scratch"]
    by_sha = {file_sha256(s.path): s for s in load_dataset(out).samples}
    assert by_sha[station.sha["e1"]].anomalies == ("edge_burr", "scratch")
    assert by_sha[station.sha["e2"]].anomalies == ("delamination",)
    assert check_dataset(out).unknown_anomalies == {"delamination": 1, "edge_burr": 1}


def test_export_regex_rule_warns_about_unmatched_names(station, store, tmp_path):
    for name in ("e1", "e2", "e4"):
        record_review(store, station.sha[name], "abnormal" if name != "e2" else "normal", reviewer="bob")
    os.rename(station.files["e4"], station.capture / "noname.tif")  # gone from its recorded path ...
    store.record_moved(os.fsencode(station.files["e4"]), station.sha["e4"], str(station.capture / "noname.tif"))
    summary = export_labels(store, tmp_path / "out", r"regex:lot(\d+)_", station.capture)
    assert summary.unmatched == []  # ... but the bundle comes from the recorded (original) name: lot03
    labels = read_labels(tmp_path / "out")
    assert sorted(r["bundle"] for r in labels.values()) == ["01", "01", "03"]
    assert load_dataset(tmp_path / "out").bundles == ["01", "03"]

    summary = export_labels(store, tmp_path / "out2", r"regex:line(\d+)", station.capture)
    assert sorted(summary.unmatched) == ["lot01_e1.tif", "lot01_e2.tif", "lot03_e4.tif"]
    assert {s.bundle for s in load_dataset(tmp_path / "out2").samples} == {"unmatched"}


def test_export_skips_missing_and_changed_files_with_reasons(station, store, tmp_path):
    for name in ("e1", "e2", "e4"):
        record_review(store, station.sha[name], "abnormal", reviewer="bob")
    station.files["e2"].unlink()
    write_tiff16(station.files["e4"], sample_image16(48, 32, seed=77))  # overwritten with other content
    station.files["e1"].unlink()  # e1 survives through its duplicate copy
    summary = export_labels(store, tmp_path / "out", "subfolder", station.capture)
    reasons = {s.sha256: s.reason for s in summary.skipped}
    assert reasons == {station.sha["e2"]: f"{station.files['e2']} is missing",
                       station.sha["e4"]: f"{station.files['e4']} holds other content now"}
    (only,) = summary.exported
    assert only.sha256 == station.sha["e1"] and only.source == str(station.files["dup"]) and only.bundle == "b2"
    assert len(load_dataset(tmp_path / "out")) == 1


def test_export_copies_when_links_fail(station, store, tmp_path, monkeypatch):
    record_review(store, station.sha["e2"], "normal", reviewer="bob")

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    summary = export_labels(store, tmp_path / "out", "subfolder", station.capture)
    (item,) = summary.exported
    dest = tmp_path / "out" / item.rel
    assert item.how == "copy" and dest.read_bytes() == station.files["e2"].read_bytes()
    assert os.stat(dest).st_ino != os.stat(station.files["e2"]).st_ino
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_export_refuses_an_existing_dataset_and_bad_rules(station, store, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "labels.csv").write_text("path,bundle,label\n")
    with pytest.raises(ReviewError, match=f"^{tmp_path / 'out'} already holds labels.csv; export into a new"):
        export_labels(store, tmp_path / "out", "subfolder", station.capture)
    with pytest.raises(ReviewError, match=r"^review.bundle_rule regex '\(' does not compile"):
        parse_bundle_rule("regex:(")


def test_bundle_for_outside_the_capture_folder(tmp_path):
    assert bundle_for(str(tmp_path / "elsewhere" / "x.tif"), None, str(tmp_path / "capture")) == "elsewhere"
    assert bundle_for(str(tmp_path / "capture" / "a" / "b" / "x.tif"), None, str(tmp_path / "capture")) == "a/b"


# ---- the review station's needs: withdrawals, decisions on a seen state, the queue's places ---------------------
def test_a_withdrawal_supersedes_the_review_and_puts_the_image_back_in_the_queue(station, store, tmp_path):
    from inspector.loop.review import ReviewConflict, withdraw_review

    sha = station.sha["e1"]
    first = record_review(store, sha, "abnormal", ["scratch"], reviewer="ann")
    assert sha not in {r["sha256"] for r in pending_reviews(store)}
    back = withdraw_review(store, first.id, reviewer="ann")
    assert (back.label, back.previous["id"], back.note) == ("withdrawn", first.id, f"withdraws review {first.id}")
    assert sha in {r["sha256"] for r in pending_reviews(store)}
    assert latest_reviews(store) == []  # nothing stands: nothing to learn from, nothing exported
    summary = export_labels(store, tmp_path / "ds", "subfolder", station.capture)
    assert summary.exported == [] and not summary.skipped
    with pytest.raises(ReviewConflict, match=rf"review {first.id} .* was already superseded: withdrawn by ann"):
        withdraw_review(store, first.id, reviewer="ann")
    with pytest.raises(ReviewError, match="is itself a withdrawal"):
        withdraw_review(store, back.id, reviewer="ann")
    again = record_review(store, sha, "normal", reviewer="bob")
    assert again.previous["id"] == back.id
    with pytest.raises(ReviewError, match="was recorded by bob, not ann"):
        withdraw_review(store, again.id, reviewer="ann", only_by="ann")
    assert [r["label"] for r in query_reviews(store, sha)] == ["normal", "withdrawn", "abnormal"]
    with pytest.raises(ReviewError, match="no review 999"):
        withdraw_review(store, 999)


def test_a_decision_on_a_state_seen_earlier_is_refused_once_another_review_came_first(station, store):
    from inspector.loop.review import ANY, ReviewConflict

    sha = station.sha["e4"]
    ann = record_review(store, sha, "normal", reviewer="ann", expect_current=None)
    with pytest.raises(ReviewConflict, match=r"was reviewed meanwhile: normal by ann at .* \(review 1\)"):
        record_review(store, sha, "abnormal", reviewer="bob", expect_current=None)
    bob = record_review(store, sha, "abnormal", reviewer="bob", expect_current=ann.id)
    assert bob.previous["id"] == ann.id
    assert record_review(store, sha, "normal", reviewer="cli", expect_current=ANY).previous["id"] == bob.id


def test_a_review_records_the_verdict_the_operator_saw(station, store):
    import sqlalchemy as sa

    from inspector.store.schema import verdicts

    sha = station.sha["e4"]
    with store.read() as conn:
        capture = conn.execute(sa.select(verdicts.c.id).where(verdicts.c.sha256 == sha)).scalar_one()
        other = conn.execute(sa.select(verdicts.c.id).where(verdicts.c.sha256 == station.sha["e1"])).scalar_one()
    from tests.store_rows import record_verdict as record

    record(store, "/elsewhere/e4.tif", sha, 10, 5, MODEL2, 0.2, "normal", None, 0.5, "global")  # a later model's
    assert record_review(store, sha, "abnormal", reviewer="ann").model_sha256 == MODEL2  # the CLI: the latest
    seen = record_review(store, sha, "abnormal", reviewer="ann", verdict_id=capture)
    assert (seen.model_sha256, seen.model_verdict, seen.p_abnormal) == (MODEL, "abnormal", 0.7)
    with pytest.raises(ReviewError, match=f"verdict {other} is not a verdict of image"):
        record_review(store, sha, "abnormal", reviewer="ann", verdict_id=other)


def test_queue_places_walk_the_pending_verdicts_oldest_first(station, store):
    import sqlalchemy as sa

    from inspector.loop.review import count_pending, queue_place
    from inspector.store.schema import images

    with store.read() as conn:
        ids = dict(conn.execute(sa.select(images.c.sha256, images.c.id).where(images.c.status != "duplicate")).all())
    e1, e3, e4 = ids[station.sha["e1"]], ids[station.sha["e3"]], ids[station.sha["e4"]]
    assert count_pending(store) == 3
    first = queue_place(store)
    assert (first.item["image_id"], first.before, first.after, first.next_item["image_id"]) == (e1, 0, 2, e3)
    skipped = queue_place(store, after=e1)
    assert (skipped.item["image_id"], skipped.before, skipped.after) == (e3, 1, 1)
    assert queue_place(store, at=e3).item["image_id"] == e3
    end = queue_place(store, after=e4)
    assert (end.item, end.before, end.after) == (None, 3, 0)
    record_review(store, station.sha["e3"], "normal", reviewer="ann")
    assert queue_place(store, after=e1).item["image_id"] == e4 and count_pending(store) == 2
    assert queue_place(store, after=123456).item["image_id"] == e1  # an unknown place: from the oldest


def test_the_pending_count_by_station_is_count_pending_of_each(station, store):
    import sqlalchemy as sa

    from inspector.store.schema import images

    with store.write() as conn:  # e1 and its copy recorded by another station
        conn.execute(sa.update(images).values(station="line1"))
        conn.execute(sa.update(images).where(images.c.sha256 == station.sha["e1"]).values(station="line2"))
    by_station = store.reviews.count_pending_by_station()
    assert by_station == {name: store.reviews.count_pending(name) for name in store.station_names()}
    assert sum(by_station.values()) == store.reviews.count_pending() == 3 and by_station == {"line1": 2, "line2": 1}


def test_verdict_queries_filter_by_review_state_and_page(station, store):
    sha = station.sha["e1"]
    assert {r["sha256"] for r in store.query_verdicts(reviewed=False)} >= {sha}
    first = record_review(store, sha, "normal", reviewer="ann")
    reviewed = store.query_verdicts(reviewed=True)
    assert {r["sha256"] for r in reviewed} == {sha} and store.count_verdicts(reviewed=True) == 2  # e1 and its copy
    from inspector.loop.review import withdraw_review

    withdraw_review(store, first.id, reviewer="ann")
    assert store.query_verdicts(reviewed=True) == [] and store.count_verdicts(reviewed=False) == 5
    every = store.query_verdicts()
    assert [r["id"] for r in store.query_verdicts(limit=2, offset=2)] == [r["id"] for r in every[2:4]]
    assert store.review_states([sha])[sha]["label"] == "withdrawn" and store.review_states([sha])[sha]["count"] == 2


def test_concurrent_decisions_on_one_image_never_fork_its_history(database_url):
    """Eight reviewers at once: with the state they saw, one wins and seven are told; without (the CLI), every
    review supersedes a different one, so the history stays one line (SQLite's writer lock, PostgreSQL's advisory
    lock on the content)."""
    import threading

    from inspector.loop.review import ReviewConflict

    sha = "e" * 64
    with open_store(database_url) as store:
        record_verdict(store, "/capture/x.tif", sha, 10, 1, MODEL, 0.9, "abnormal", None, 0.5, "global")
    outcomes: list[str] = []

    def reviewer(i: int, expect) -> None:
        with open_store(database_url) as own:
            try:
                kwargs = {} if expect == "cli" else {"expect_current": None}
                record_review(own, sha, "normal", reviewer=f"r{i}", **kwargs)
                outcomes.append("recorded")
            except ReviewConflict:
                outcomes.append("conflict")

    for expect in (None, "cli"):
        outcomes.clear()
        threads = [threading.Thread(target=reviewer, args=(i, expect)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == (["conflict"] * 7 + ["recorded"] if expect is None else ["recorded"] * 8)
    with open_store(database_url) as store:
        rows = query_reviews(store, sha)
    superseded = [r["supersedes"] for r in rows if r["supersedes"] is not None]
    assert len(rows) == 9 and len(superseded) == len(set(superseded)) == 8

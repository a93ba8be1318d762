"""labels.csv parsing, leave-one-bundle-out folds, fingerprints and `inspector dataset check`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from inspector.cli import cli
from inspector.data.dataset import (ANOMALY_TYPES, Sample, anomaly_name, leave_one_bundle_out, load_dataset, mask_rel,
                               normalize_anomaly)
from inspector.data.datasetcheck import check_dataset
from inspector.base.errors import DatasetError
from inspector.data.localize import write_mask


def write_image(path: Path, seed: int = 0, shape: tuple[int, int] = (64, 32), compression: str | None = "zlib") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tifffile.imwrite(path, rng.integers(1700, 2800, size=shape, dtype=np.uint16), compression=compression)


def make_set(root: Path, rows: list[str], header: str = "path,bundle,label,anomaly", images: bool = True) -> Path:
    """labels.csv with `rows`, and a real TIFF for every listed path."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    if images:
        for i, row in enumerate(rows):
            rel = row.split(",")[0]
            if rel and not (root / rel).exists():
                write_image(root / rel, seed=i)
    return root


def test_load_dataset_reads_rows_and_anomaly_spellings(tmp_path):
    root = make_set(tmp_path / "ds", [
        "a/1.tif,b1,normal,",
        "a/2.tif,b1,Abnormal,Scratches;edge cuts",
        "b/3.tif,b2,abnormal,ink entry/exit",
        "b/4.tif,b2,normal,bubbles",
    ])
    ds = load_dataset(root)
    assert [s.rel for s in ds.samples] == ["a/1.tif", "a/2.tif", "b/3.tif", "b/4.tif"]
    assert ds.samples[1].anomalies == ("scratch", "edge_cut")
    assert ds.samples[2].anomalies == ("ink_entry_exit",)
    assert ds.samples[3].anomalies == ("bubble",) and ds.samples[3].label == "normal"
    assert ds.y.tolist() == [0, 1, 1, 0]
    assert ds.bundles == ["b1", "b2"]
    assert ds.samples[0].path == (root / "a/1.tif").resolve() and ds.samples[0].path.is_absolute()


def test_anomaly_types_and_spellings():
    assert len(ANOMALY_TYPES) == 11
    spellings = ["scratches", "lines", "edge cuts", "edge tensions", "smudges", "edge ink flow", "bubbles",
                 "missing ink", "agglomerate", "ink fluctuations", "ink entry/exit"]
    assert tuple(normalize_anomaly(s) for s in spellings) == ANOMALY_TYPES
    assert normalize_anomaly("scrach") is None
    assert tuple(anomaly_name(s) for s in spellings) == ANOMALY_TYPES  # known names keep their normalization
    assert anomaly_name("Edge__Cuts") == "edge_cut"


@pytest.mark.parametrize("name, expected", [
    ("Delamination", "delamination"), (" Edge Burr ", "edge_burr"), ("edge-burr", "edge_burr"),
    ("pin/hole", "pin_hole"), ("edge_burrs", "edge_burrs"), ("Scrach", "scrach"), ("Rißbildung", "rißbildung"),
])
def test_anomaly_name_accepts_a_plants_own_types(name, expected):
    assert anomaly_name(name) == expected
    assert anomaly_name(expected) == expected  # written back to labels.csv, it reads the same
    assert normalize_anomaly(name) is None


@pytest.mark.parametrize("name, message", [
    ("edge, burr", "anomaly type 'edge, burr' contains ','; separate anomaly types with ';' "
                   "(a name may not hold ',' or ';')"),
    ("edge;burr", "anomaly type 'edge;burr' contains ';'; separate anomaly types with ';' "
                  "(a name may not hold ',' or ';')"),
    ("edge\nburr", "anomaly type 'edge\\nburr' contains a control character ('\\n'); an anomaly name must be "
                   "one line of visible text"),
    ("edge\tburr", "anomaly type 'edge\\tburr' contains a control character ('\\t'); an anomaly name must be "
                   "one line of visible text"),
    ("edge\u2028burr", "anomaly type 'edge\\u2028burr' contains a line separator ('\\u2028'); an anomaly name "
                       "must be one line of visible text"),
    (" - / ", "anomaly type '- /' is empty once spaces, '-', '/' and '_' are dropped; leave the anomaly empty "
              "when there is none"),
])
def test_anomaly_name_refuses_empty_names_and_ones_that_break_the_csv(name, message):
    with pytest.raises(DatasetError) as err:
        anomaly_name(name)
    assert str(err.value) == message
    assert normalize_anomaly(name) is None


def test_labels_with_anomaly_types_outside_the_eleven_load(tmp_path):
    root = make_set(tmp_path / "ds", [
        "a/1.tif,b1,abnormal,Delamination",
        "a/2.tif,b1,abnormal,edge burr;Scratches;edge-burr",
        "b/3.tif,b2,normal,delamination",
        "b/4.tif,b2,normal,",
    ])
    ds = load_dataset(root)
    assert [s.anomalies for s in ds.samples] == [("delamination",), ("edge_burr", "scratch"), ("delamination",), ()]


def test_anomaly_with_a_quoted_line_break_is_refused_on_its_line(tmp_path):
    root = make_set(tmp_path / "ds", ["x.tif,b1,normal,", 'y.tif,b1,abnormal,"edge\nburr"', "z.tif,b2,maybe,",
                                      "w.tif,b2,abnormal,"])
    f = root / "labels.csv"
    with pytest.raises(DatasetError) as err:
        load_dataset(root)
    assert str(err.value) == (f"{f} line 3: anomaly type 'edge\\nburr' contains a control character ('\\n'); an "
                              "anomaly name must be one line of visible text; is a '\"' left open on this line? "
                              f"(1 more problem(s); run `inspector dataset check {root}` to list all)")
    report = check_dataset(root)
    assert [(p.kind, p.line) for p in report.problems] == [("bad_anomaly", 3), ("unknown_label", 5)]


def test_anomaly_column_is_optional(tmp_path):
    root = make_set(tmp_path, ["x.tif,b1,normal", "y.tif,b2,abnormal"], header="path,bundle,label")
    ds = load_dataset(root)
    assert [s.anomalies for s in ds.samples] == [(), ()]


@pytest.mark.parametrize("rows, header, message", [
    (["x.tif,b1,normal"], "path,label", "{f} line 1: missing column 'bundle'; the header must be path,bundle,label[,anomaly]"),
    (["x.tif,b1,normal", "y.tif,b1,broken,"], None, "{f} line 3: label 'broken' is not normal or abnormal; fix the label"),
    (["x.tif,b1,normal", 'y.tif,b1,abnormal,"scratch, bubble"'], None,
     "{f} line 3: anomaly type 'scratch, bubble' contains ','; separate anomaly types with ';' "
     "(a name may not hold ',' or ';')"),
    (["x.tif,b1,normal", "y.tif,b1,normal", "x.tif,b2,abnormal"], None,
     "{f} line 4: path x.tif already listed on line 2; remove one row"),
    (["x.tif,,normal"], None, "{f} line 2: empty bundle; fill it in or remove the row"),
    (["../x.tif,b1,normal"], None, "{f} line 2: path ../x.tif must be relative to {root} and stay inside it"),
    ([], None, "{f} has no data rows; add one row per image (path,bundle,label)"),
])
def test_label_errors_name_file_and_line(tmp_path, rows, header, message):
    root = make_set(tmp_path / "ds", rows, header=header or "path,bundle,label,anomaly",
                    images=not any(".." in r for r in rows))
    with pytest.raises(DatasetError) as err:
        load_dataset(root)
    assert str(err.value) == message.format(f=root / "labels.csv", root=root)


def test_missing_image_and_more_problems_hint(tmp_path):
    root = make_set(tmp_path / "ds", ["x.tif,b1,normal", "y.tif,b1,normal", "z.tif,b1,bad"])
    (root / "y.tif").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset(root)
    assert str(err.value) == (f"{root / 'labels.csv'} line 3: image y.tif does not exist in {root}; fix the path or "
                              f"remove the row (1 more problem(s); run `inspector dataset check {root}` to list all)")


def test_missing_folder_and_labels(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset folder .*nope does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    assert str(err.value) == (f"{tmp_path / 'labels.csv'} not found: a dataset folder needs labels.csv with the header "
                              "path,bundle,label[,anomaly] (or run `inspector synth DIR` for a synthetic set)")


def test_leave_one_bundle_out_covers_each_bundle_once():
    bundles = ["c", "a", "b", "a", "c", "c", "b"]
    samples = [Sample(Path(f"/x/{i}.tif"), b, "normal") for i, b in enumerate(bundles)]
    folds = leave_one_bundle_out(samples)
    assert [f.bundle for f in folds] == ["a", "b", "c"]
    held = np.concatenate([f.test_idx for f in folds])
    assert sorted(held.tolist()) == list(range(len(samples)))  # every sample held out exactly once
    for f in folds:
        assert not set(f.train_idx.tolist()) & set(f.test_idx.tolist())
        assert sorted([*f.train_idx.tolist(), *f.test_idx.tolist()]) == list(range(len(samples)))
        assert {bundles[i] for i in f.test_idx} == {f.bundle}
        assert f.bundle not in {bundles[i] for i in f.train_idx}


def test_leave_one_bundle_out_needs_two_bundles():
    with pytest.raises(DatasetError, match=r"^leave-one-bundle-out needs at least 2 bundles, found 1 \(a\)"):
        leave_one_bundle_out([Sample(Path("/x/1.tif"), "a", "normal"), Sample(Path("/x/2.tif"), "a", "abnormal")])


def test_sample_rel_defaults_to_file_name():
    assert Sample(Path("/x/y/1.tif"), "a", "abnormal").rel == "1.tif"
    assert Sample(Path("/x/y/1.tif"), "a", "abnormal").y == 1


def test_fingerprint_stable_and_sensitive(tmp_path):
    root = make_set(tmp_path, ["x.tif,b1,normal", "y.tif,b2,abnormal"])
    first = load_dataset(root).fingerprint()
    assert len(first) == 64 and load_dataset(root).fingerprint() == first
    (root / "labels.csv").write_text("path,bundle,label\ny.tif,b2,abnormal\nx.tif,b1,normal\n")
    assert load_dataset(root).fingerprint() == first  # row order does not matter
    (root / "labels.csv").write_text("path,bundle,label\nx.tif,b1,abnormal\ny.tif,b2,abnormal\n")
    relabeled = load_dataset(root).fingerprint()
    assert relabeled != first
    write_image(root / "y.tif", seed=5, shape=(64, 33))
    resized = load_dataset(root).fingerprint()
    assert resized != relabeled  # new size and mtime


def test_fingerprint_misses_same_size_same_mtime_rewrite(tmp_path):
    """The documented limit of a stat-based fingerprint: such a rewrite keeps the fingerprint."""
    write_image(tmp_path / "x.tif", seed=1, compression=None)
    write_image(tmp_path / "y.tif", seed=2, compression=None)
    root = make_set(tmp_path, ["x.tif,b1,normal", "y.tif,b2,abnormal"])
    before = load_dataset(root).fingerprint()
    st = (root / "x.tif").stat()
    write_image(root / "x.tif", seed=9, compression=None)
    assert (root / "x.tif").stat().st_size == st.st_size
    os.utime(root / "x.tif", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_dataset(root).fingerprint() == before
    os.utime(root / "x.tif", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert load_dataset(root).fingerprint() != before


@pytest.fixture
def flawed_set(tmp_path) -> Path:
    """Two bundles; one without abnormals, a truncated TIFF, a copied file, an unknown label, a bad anomaly."""
    root = make_set(tmp_path / "flawed", [
        "b1/ok1.tif,b1,normal,",
        "b1/ok2.tif,b1,abnormal,scratch",
        "b1/copy.tif,b1,normal,",
        "b2/n1.tif,b2,normal,",
        "b2/broken.tif,b2,normal,",
        "b2/odd.tif,b2,maybe,",
        'b2/n2.tif,b2,normal,"blob, smear"',
    ])
    (root / "b1/copy.tif").write_bytes((root / "b1/ok1.tif").read_bytes())
    data = (root / "b2/broken.tif").read_bytes()
    (root / "b2/broken.tif").write_bytes(data[: len(data) // 3])
    return root


def test_check_finds_every_problem(flawed_set):
    report = check_dataset(flawed_set)
    f = flawed_set / "labels.csv"
    assert not report.ok
    assert report.counts == {"b1": {"normal": 2, "abnormal": 1}, "b2": {"normal": 1, "abnormal": 0}}
    kinds = [(p.kind, p.line, p.rel) for p in report.problems]
    assert kinds == [("unreadable", 6, "b2/broken.tif"), ("unknown_label", 7, "b2/odd.tif"),
                     ("bad_anomaly", 8, "b2/n2.tif")]
    assert report.problems[0].message.startswith(f"{f} line 6: image b2/broken.tif is unusable: ")
    assert report.problems[0].message.endswith("; replace or remove it")
    assert report.duplicates == [["b1/ok1.tif", "b1/copy.tif"]]
    assert report.notes == [
        "balanced accuracy is undefined for bundle b2 (no abnormal example); cross-validation reports its TNR "
        "alone and marks it; its counts still enter the pooled totals"]
    text = report.format_text()
    assert "b1            2         1       3" in text
    assert "problems (4):" in text and text.endswith("NOT OK: fix the problems above before training")
    d = report.to_dict()
    assert d["ok"] is False and d["totals"] == {"normal": 3, "abnormal": 1}
    assert d["problems"][1] == {"kind": "unknown_label", "line": 7, "path": "b2/odd.tif",
                                "message": f"{f} line 7: label 'maybe' is not normal or abnormal; fix the label"}


def test_check_clean_set_is_ok(tmp_path):
    root = make_set(tmp_path, ["a.tif,b1,normal", "b.tif,b1,abnormal", "c.tif,b2,normal", "d.tif,b2,abnormal"])
    report = check_dataset(root)
    assert report.ok and not report.notes and report.format_text().endswith("OK: ready for training")


def test_check_one_bundle_is_a_problem(tmp_path):
    root = make_set(tmp_path, ["a.tif,b1,normal", "b.tif,b1,abnormal"])
    report = check_dataset(root)
    assert not report.ok
    assert [p.kind for p in report.problems] == ["one_bundle"]


def new_types_set(root: Path) -> Path:
    """A clean set whose anomaly column names types outside the paper's eleven (one a likely typo)."""
    return make_set(root, [
        "b1/1.tif,b1,abnormal,Delamination",
        "b1/2.tif,b1,normal,edge burr",
        "b1/3.tif,b1,abnormal,delamination;scratches",
        "b2/4.tif,b2,abnormal,Scrach",
        "b2/5.tif,b2,normal,",
        "b2/6.tif,b2,abnormal,delaminations",
    ])


NEW_TYPES_NOTE = ("4 anomaly types outside the paper's eleven: delamination (2 samples), delaminations (1 sample), "
                  "edge_burr (1 sample), scrach (1 sample); scrach is close to scratch: fix it if it is a typo")


def test_check_notes_anomaly_types_outside_the_eleven(tmp_path):
    report = check_dataset(new_types_set(tmp_path / "ds"))
    assert report.ok and report.problems == []
    assert report.unknown_anomalies == {"delamination": 2, "delaminations": 1, "edge_burr": 1, "scrach": 1}
    assert report.notes == [NEW_TYPES_NOTE]
    assert f"notes:\n  {NEW_TYPES_NOTE}\n" in report.format_text()
    d = report.to_dict()
    assert d["ok"] is True and d["unknown_anomalies"] == report.unknown_anomalies and d["notes"] == [NEW_TYPES_NOTE]
    one = make_set(tmp_path / "one", ["a.tif,b1,abnormal,Edge Burr", "b.tif,b2,normal,"])
    assert check_dataset(one).notes[-1] == "1 anomaly type outside the paper's eleven: edge_burr (1 sample)"
    assert check_dataset(make_set(tmp_path / "known", ["a.tif,b1,abnormal,scratch", "b.tif,b2,normal,"])
                         ).unknown_anomalies == {}


def test_cli_check_notes_new_anomaly_types_and_exits_0(tmp_path):
    root = new_types_set(tmp_path / "ds")
    result = CliRunner().invoke(cli, ["dataset", "check", str(root)])
    assert result.exit_code == 0, result.output
    assert f"  {NEW_TYPES_NOTE}\n" in result.stdout and result.stderr == ""
    assert result.stdout.rstrip().endswith("OK: ready for training")
    result = CliRunner().invoke(cli, ["dataset", "check", "--format", "json", str(root)])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["ok"] is True and d["notes"] == [NEW_TYPES_NOTE]
    assert d["unknown_anomalies"] == {"delamination": 2, "delaminations": 1, "edge_burr": 1, "scrach": 1}


def test_summarize_counts_new_anomaly_types_after_the_eleven(tmp_path):
    from inspector.data.synth import summarize

    info = summarize(load_dataset(new_types_set(tmp_path / "ds")))
    assert list(info["anomalies"])[:11] == list(ANOMALY_TYPES)
    assert info["anomalies"]["delamination"] == {"abnormal": 2, "normal": 0}
    assert info["anomalies"]["edge_burr"] == {"abnormal": 0, "normal": 1}
    assert info["anomalies"]["scratch"] == {"abnormal": 1, "normal": 0}


def test_cli_check_exit_codes(flawed_set, tmp_path):
    result = CliRunner().invoke(cli, ["dataset", "check", str(flawed_set)])
    assert result.exit_code == 1
    assert "label 'maybe' is not normal or abnormal" in result.stdout
    assert result.stderr == f"Error: dataset {flawed_set} has 4 problem(s), listed above; fix them before training\n"
    result = CliRunner().invoke(cli, ["dataset", "check", "--format", "json", str(flawed_set)])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["duplicate_content"] == [["b1/ok1.tif", "b1/copy.tif"]]
    clean = make_set(tmp_path / "clean", ["a.tif,b1,normal", "b.tif,b2,abnormal"])
    result = CliRunner().invoke(cli, ["dataset", "check", str(clean)])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("OK: ready for training")
    result = CliRunner().invoke(cli, ["dataset", "check", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert result.output == (f"Error: dataset folder {tmp_path / 'none'} does not exist; "
                             "give a folder holding labels.csv\n")


def test_mask_rel_and_dataset_mask_path(tmp_path):
    assert mask_rel("bundle01/bundle01_0003.tif") == "masks/bundle01/bundle01_0003.png"
    assert mask_rel("a\\b\\c.dcm") == "masks/a/b/c.png" and mask_rel("x.png") == "masks/x.png"
    root = make_set(tmp_path / "ds", ["b1/a.tif,b1,abnormal,line", "b1/b.tif,b1,abnormal,smudge", "c.tif,b2,normal,"])
    write_mask(root / "masks/b1/a.png", np.ones((64, 32), bool))
    ds = load_dataset(root)
    assert ds.mask_path(0) == root.resolve() / "masks/b1/a.png"
    assert ds.mask_path(1) is None and ds.mask_path(2) is None
    (root / "masks/b1/b.png").mkdir(parents=True)  # a folder by that name is no mask
    assert ds.mask_path(1) is None


@pytest.fixture
def masked_set(tmp_path) -> Path:
    """Four abnormal images (64 x 32) with a good, a too-small, a damaged and no mask; stray masks of a normal
    image and of no image."""
    root = make_set(tmp_path / "masked", [
        "b1/good.tif,b1,abnormal,line",
        "b1/small.tif,b1,abnormal,smudge",
        "b2/damaged.tif,b2,abnormal,bubble",
        "b2/bare.tif,b2,abnormal,scratch",
        "b1/normal.tif,b1,normal,",
        "b2/normal.tif,b2,normal,",
    ])
    mask = np.zeros((64, 32), bool)
    mask[10:20, 5:9] = True
    write_mask(root / "masks/b1/good.png", mask)
    write_mask(root / "masks/b1/small.png", mask[:32, :16])
    write_mask(root / "masks/b2/damaged.png", mask)
    data = (root / "masks/b2/damaged.png").read_bytes()
    (root / "masks/b2/damaged.png").write_bytes(data[: len(data) // 2])
    write_mask(root / "masks/b1/normal.png", mask)
    write_mask(root / "masks/b3/gone.png", mask)
    return root


def test_check_counts_masks_and_flags_wrong_ones(masked_set):
    report = check_dataset(masked_set)
    f = masked_set / "labels.csv"
    assert report.masks == {"abnormal": 4, "with_mask": 3, "for_normal": ["masks/b1/normal.png"],
                            "without_image": ["masks/b3/gone.png"]}
    assert [(p.kind, p.line, p.rel) for p in report.problems] == [("mask_size", 3, "b1/small.tif"),
                                                                  ("mask_unreadable", 4, "b2/damaged.tif")]
    assert report.problems[0].message == (f"{f} line 3: mask masks/b1/small.png is 32 x 16 px but image b1/small.tif "
                                          "is 64 x 32 (height x width); a mask must be as large as its image")
    assert report.problems[1].message.startswith(f"{f} line 4: mask {masked_set / 'masks/b2/damaged.png'} "
                                                 "is a damaged PNG")
    assert report.notes == ["1 mask for images labelled normal: masks/b1/normal.png; relabel each image or remove "
                            "its mask",
                            "1 mask for images not listed in labels.csv: masks/b3/gone.png; remove each or add its image"]
    assert "defect masks (masks/): 3 of 4 abnormal images" in report.format_text()
    assert not report.ok


def test_stray_and_empty_masks_are_notes_not_problems(masked_set):
    (masked_set / "masks/b1/small.png").unlink()
    (masked_set / "masks/b2/damaged.png").unlink()
    write_mask(masked_set / "masks/b2/bare.png", np.zeros((64, 32), bool))
    for i in range(7):
        write_mask(masked_set / f"masks/b9/{i}.png", np.ones((4, 4), bool))
    report = check_dataset(masked_set)
    assert report.ok and report.problems == []
    assert report.masks["with_mask"] == 2 and len(report.masks["without_image"]) == 8
    assert "mask masks/b2/bare.png of image b2/bare.tif marks no defect pixel; localization cannot be measured on it" in report.notes
    assert ("8 masks for images not listed in labels.csv: masks/b3/gone.png, masks/b9/0.png, masks/b9/1.png, "
            "masks/b9/2.png, masks/b9/3.png and 3 more; remove each or add its image") in report.notes


def test_cli_check_json_keeps_mask_counts(masked_set):
    result = CliRunner().invoke(cli, ["dataset", "check", "--format", "json", str(masked_set)])
    assert result.exit_code == 1
    d = json.loads(result.stdout)
    assert d["masks"]["with_mask"] == 3 and d["masks"]["for_normal"] == ["masks/b1/normal.png"]
    assert [p["kind"] for p in d["problems"]] == ["mask_size", "mask_unreadable"]


def test_check_without_masks_counts_none(tmp_path):
    root = make_set(tmp_path, ["a.tif,b1,normal", "b.tif,b1,abnormal", "c.tif,b2,normal", "d.tif,b2,abnormal"])
    report = check_dataset(root)
    assert report.ok and report.masks == {"abnormal": 2, "with_mask": 0, "for_normal": [], "without_image": []}
    assert "defect masks (masks/): 0 of 2 abnormal images" in report.format_text()


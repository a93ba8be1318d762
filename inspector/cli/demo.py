"""`make demo`: the whole station on synthetic electrodes, each step shown as the command a user types."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from inspector.base.errors import InspectorError

if TYPE_CHECKING:
    from inspector.store.store import Store

OUT = Path(os.environ.get("INSPECTOR_DEMO_DIR", "demo-run")).resolve()
EXE = [sys.executable, "-m", "inspector"]
# Small enough for a few minutes on two CPU cores; the real station uses 2000 x 1000 inputs.
SEED, SCALE, BUNDLES, PER_BUNDLE = 7, 0.2, 5, 16
DROPPED = 10  # new scans from the set's own bundles; every third one abnormal
BOLD, END = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{END}", flush=True)


def run(*args: str, check: bool = True, allowed: tuple[int, ...] = (0,), stdin: str | None = None) -> int:
    """Run `inspector ARGS...` with the demo's config, echoing the command first."""
    shown = " ".join(shlex.quote(a) for a in args)
    print(f"$ inspector --config {OUT.name}/config.toml {shown}", flush=True)
    proc = subprocess.run([*EXE, "--config", str(OUT / "config.toml"), *args], input=stdin, text=True)
    if check and proc.returncode not in allowed:
        raise SystemExit(f"demo: `inspector {shown}` failed with exit code {proc.returncode}")
    return proc.returncode


def backbone_weights() -> str:
    """ImageNet weights when this machine has or can fetch them; otherwise random, said plainly."""
    from inspector.base.errors import ModelError
    from inspector.learn.model import build_detector

    try:
        build_detector(weights="imagenet")
        return "imagenet"
    except ModelError as exc:
        print(f"note: {exc}")
        print("note: this demo therefore uses a RANDOMLY INITIALISED backbone (model.weights = \"none\").\n"
              "      The pipeline is the real one, but accuracy figures below are NOT those of an\n"
              "      ImageNet-pretrained detector; on a connected machine the demo uses ImageNet weights.")
        return "none"


def write_config(weights: str) -> None:
    (OUT / "capture").mkdir(parents=True, exist_ok=True)
    (OUT / "config.toml").write_text(f"""\
# The demo's configuration: small inputs so that everything runs in minutes on two CPU cores.
[convert]
method = "local"

[model]
path = "models/detector.safetensors"
weights = "{weights}"
input_size = [384, 192]
device = "auto"

[infer]
batch_size = 8

[train]
# 0: threshold 0.5 of the class-weighted detector. A threshold for a target recall is chosen from
# out-of-bundle predictions: with 5 bundles that is a threshold for bundles the detector never saw,
# while the demo's scans come from the bundles it learned (try `--target-recall 0.9` to compare).
target_recall = 0.0

[watch]
capture_dir = "capture"
settle_seconds = 0.5
rescan_seconds = 5.0
after = "move"
# A file that reads as cut short is judged again when it changes, and quarantined as `truncated` only
# once it stayed so this long (a writer may pause mid-file): 300 s at a plant, a few seconds here.
incomplete_retry_seconds = 3.0

[state]
dir = "var"

[station]
name = "line1"

[database]
url = "sqlite:///inspector.db"

[review]
bundle_rule = "regex:^(bundle\\\\d+)-"

[retrain]
base_dataset = "dataset"
methods = ["global"]
""")


def drop_images(capture: Path) -> list[Path]:
    """New electrodes arrive from the 'scanner': written as .part, then renamed, as scanners do."""
    import tifffile

    from inspector.data.synth import synth_bundle_electrode

    paths = []
    for i in range(DROPPED):
        bundle = 1 + i % BUNDLES  # production goes on with the demo set's coatings and ink mixes
        img = synth_bundle_electrode(SEED, bundle, index=100 + i, scale=SCALE, abnormal=is_abnormal(i))
        final = capture / f"bundle{bundle:02d}-electrode-{i:03d}.tif"
        part = capture / f".{final.name}.part"
        tifffile.imwrite(part, img, compression="zlib")
        os.replace(part, final)
        paths.append(final)
    broken = capture / "bundle02-electrode-broken.tif"
    broken.write_bytes(b"II*\x00" + os.urandom(200))  # a scan cut off after a few bytes
    paths.append(broken)
    # the same electrode saved twice under another name: recorded, not scored twice
    dup = capture / "bundle01-electrode-000-copy.tif"
    dup.write_bytes(paths[0].read_bytes())
    paths.append(dup)
    return paths


def is_abnormal(i: int) -> bool:
    return i % 3 == 0


def _open(db: Path) -> Store:
    """The demo's database, read-only, asked through the store like every other reader."""
    from inspector.store.store import open_store

    return open_store(f"sqlite:///{db}", readonly=True)


def tally(db: Path, model_prefix: str | None = None) -> tuple[int, int, int, int]:
    """What the daemon decided about the scans the demo made (or the model with this sha256 prefix, by
    `inspector rescore`): (abnormal flagged, abnormal, normal passed, normal)."""
    with _open(db) as store:
        rows = [(r["path"], r["verdict"]) for r in store.query_verdicts(model=model_prefix)]
    flagged = {Path(path).name: verdict for path, verdict in rows}
    counts = [0, 0, 0, 0]
    for i in range(DROPPED):
        verdict = next((v for name, v in flagged.items() if name.endswith(f"-electrode-{i:03d}.tif")), None)
        if is_abnormal(i):
            counts[0] += verdict == "abnormal"
            counts[1] += 1
        else:
            counts[2] += verdict == "normal"
            counts[3] += 1
    return counts[0], counts[1], counts[2], counts[3]


def wait_for_outcomes(db: Path, expected: int, timeout: float = 180.0) -> int:
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        if db.exists():
            try:
                with _open(db) as store:
                    count = store.count_verdicts() + store.count_rejections()
            except InspectorError:  # not created yet, or the daemon is creating its tables
                count = 0
            if count >= expected:
                return count
        time.sleep(0.5)
    return count


def main() -> int:
    started = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    for stale in ("inspector.db", "inspector.db-wal", "inspector.db-shm", "var/web-users.json"):
        (OUT / stale).unlink(missing_ok=True)
    shutil.rmtree(OUT / "capture", ignore_errors=True)  # an earlier run's scans: this run's start afresh
    say("Backbone weights")
    write_config(backbone_weights())

    say(f"1. A synthetic electrode dataset: {BUNDLES} bundles x {PER_BUNDLE} images, 16-bit, "
        f"scaled to {SCALE:.0%} for speed")
    if not (OUT / "dataset" / "labels.csv").exists():
        run("synth", str(OUT / "dataset"), "--bundles", str(BUNDLES), "--per-bundle", str(PER_BUNDLE),
            "--scale", str(SCALE), "--seed", str(SEED))
    run("dataset", "check", str(OUT / "dataset"))

    say("2. Leave-one-bundle-out cross-validation (the paper's Table 1, on the demo set)")
    run("cv", str(OUT / "dataset"), "--methods", "global,local")  # all results kept under var/cv/ (the "kept:" line)

    say("3. Train the detector the daemon uses (on every image of the set; threshold 0.5)")
    run("train", str(OUT / "dataset"), "--out", str(OUT / "models" / "detector.safetensors"))
    run("model", "info", str(OUT / "models" / "detector.safetensors"))

    say("4. Start two daemons (stations line1 and line2) on one capture folder and drop new scans in\n"
        "   (one broken, one duplicate): each file is claimed in the database by one of them")
    second = OUT / "config-line2.toml"  # the same settings, its own name and state folder
    second.write_text((OUT / "config.toml").read_text().replace('name = "line1"', 'name = "line2"')
                      .replace('dir = "var"', 'dir = "var-line2"'))
    daemons = []
    for config in (OUT / "config.toml", second):
        daemons.append(subprocess.Popen([*EXE, "--config", str(config), "watch"], env=dict(os.environ)))
        print(f"$ inspector --config {OUT.name}/{config.name} watch &   (pid {daemons[-1].pid})")
    try:
        time.sleep(1.0)
        dropped = drop_images(OUT / "capture")
        print(f"dropped {len(dropped)} files into {OUT.name}/capture/")
        seen = wait_for_outcomes(OUT / "inspector.db", len(dropped))
        print(f"the daemons recorded an outcome for {seen} of {len(dropped)} files")
        # heat maps (the normal model's map, with its boxes) are drawn just after each abnormal verdict: a moment
        time.sleep(2.0)
        run("status")  # both stations' heartbeats, while they run
    finally:
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        for daemon in daemons:
            rc = daemon.wait(timeout=60)
            print(f"daemon (pid {daemon.pid}) stopped with exit code {rc} after SIGTERM")

    say("5. What the daemon decided")
    run("verdicts")
    hit, abnormal, passed, normal = tally(OUT / "inspector.db")
    print(f"the demo made these scans, so it knows the truth: {hit} of {abnormal} abnormal electrodes flagged, "
          f"{passed} of {normal} normal electrodes passed")
    run("rejections")
    run("status")
    run("verdicts", "--station", "line2", "--limit", "5")

    say("6. An operator reviews the flagged electrodes")
    run("reviews", "--pending")
    # the operator confirms one true defect and clears one false alarm (the demo knows which is which)
    flagged = flagged_truth(OUT / "inspector.db")
    for truth, extra in (("abnormal", ["--anomaly", "scratch"]), ("normal", ["--note", "minor smudge, acceptable"])):
        sha = next((s for s, abnormal in flagged if abnormal == (truth == "abnormal")), None)
        if sha is not None:
            run("review", sha, "--label", truth, "--by", "demo-operator", *extra)
    run("reviews")

    say("7. Nightly retraining: promotes the candidate only if it is not worse")
    if run("retrain", allowed=(0, 3)) == 0:
        say("7b. The promoted model on today's scans, beside the verdicts they got")
        run("rescore")
        new_sha = hashlib.sha256((OUT / "models" / "detector.safetensors").read_bytes()).hexdigest()
        hit, abnormal, passed, normal = tally(OUT / "inspector.db", new_sha)
        print(f"the promoted model: {hit} of {abnormal} abnormal electrodes flagged, {passed} of {normal} normal "
              f"electrodes passed (`inspector verdicts --model {new_sha[:12]}` lists them)")

    say("8. A report people read")
    run("export", "--format", "html", "--out", str(OUT / "report.html"))
    run("export", "--format", "csv", "--out", str(OUT / "verdicts.csv"))
    print(f"\nopen {OUT / 'report.html'} in a browser.")

    say("9. The review station: operators clear the flagged electrodes in a browser")
    password = secrets.token_urlsafe(9)
    run("user", "add", DEMO_USER, "--role", "reviewer", "--password-stdin", stdin=password + "\n")
    station = start_review_station()
    try:
        print(f"the review station answered {station.url}healthz: {healthz(station.url)}")
        print(f"\n{BOLD}open {station.url} and log in as {DEMO_USER}, password {password}{END}\n"
              "(N normal, A abnormal, S skip, Z undo; the electrodes the operator did not review wait there)")
        print(f"demo finished in {time.monotonic() - started:.0f} s; everything is under {OUT}/")
        if sys.stdin.isatty() and sys.stdout.isatty():
            print("the review station keeps running until you press Ctrl-C", flush=True)
            try:
                station.proc.wait()
            except KeyboardInterrupt:
                print("\nstopping the review station")
        else:
            print(f"(not a terminal: the review station stops now; `inspector --config {OUT.name}/config.toml serve` "
                  "starts it again)")
    finally:
        station.stop()
    return 0


DEMO_USER = "demo-operator"
WEB_PORT = 8470


class ReviewStation:
    """`inspector serve` in a subprocess; `url` is where it listens."""

    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc, self.url = proc, url

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_review_station() -> ReviewStation:
    """On port 8470, or on a free port when that one is taken (another station, an earlier demo)."""
    for port in (WEB_PORT, 0):
        print(f"$ inspector --config {OUT.name}/config.toml serve --port {port} &", flush=True)
        proc = subprocess.Popen([*EXE, "--config", str(OUT / "config.toml"), "serve", "--port", str(port)],
                                stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            sys.stderr.write(line)
            found = re.search(r"review station on (http://\S+/)", line)
            if found:
                threading.Thread(target=shutil.copyfileobj, args=(proc.stderr, sys.stderr), daemon=True).start()
                return ReviewStation(proc, found.group(1))
        proc.wait()
    raise SystemExit("demo: `inspector serve` did not start (see its message above)")


def healthz(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url + "healthz", timeout=10) as answer:
        return answer.read().decode().strip()


def flagged_truth(db: Path) -> list[tuple[str, bool]]:
    """(sha256, truly abnormal) of every scan the demo made that the daemon flagged, oldest first."""
    with _open(db) as store:
        flagged = [r for r in store.query_verdicts() if r["verdict"] in ("abnormal", "rescan")]
    rows = [(r["sha256"], r["path"]) for r in sorted(flagged, key=lambda r: (r["verdict_time"], r["id"]))]
    out = []
    for sha, path in rows:
        match = re.search(r"-electrode-(\d{3})", Path(path).name)
        if match and sha not in {s for s, _ in out}:
            out.append((sha, is_abnormal(int(match.group(1)))))
    return out


if __name__ == "__main__":
    sys.exit(main())

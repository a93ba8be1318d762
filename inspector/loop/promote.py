"""Putting a retrained model in place: the candidate renamed onto model.path (the previous one kept), the daemon
asked to reload, and the retrain's work folders pruned except those a model still points at."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from inspector.base.durable import atomic_target
from inspector.base.errors import ModelError
from inspector.station.notify import PID_NAME, running_inspector

MARKER = ".inspector-retrain"  # in every retrain work folder: prune_work removes only folders that hold it


def place_atomically(src: Path, dest: Path) -> None:
    """dest becomes a copy of src in one rename: hard link (src is never modified) else a fsynced copy."""
    with atomic_target(dest, mode=None) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def previous_path(model_path: Path) -> Path:
    return model_path.with_name(f"{model_path.name.split('.')[0]}.previous.safetensors")


def swap_in(candidate: Path, model_path: Path) -> Path | None:
    """Keep the current model as <name>.previous.safetensors, then rename the candidate onto model.path."""
    kept = None
    if model_path.is_file():
        kept = previous_path(model_path)
        place_atomically(model_path, kept)
    place_atomically(candidate, model_path)
    return kept


def reload_daemon(state_dir: Path) -> str:
    """SIGHUP to the daemon in the pid file, else `systemctl reload inspector`, else say none runs."""
    pid = running_inspector(Path(state_dir) / PID_NAME)
    if pid:
        try:
            os.kill(pid, signal.SIGHUP)
            return f"asked the daemon (pid {pid}) to reload: SIGHUP sent"
        except OSError as exc:
            return f"could not signal the daemon (pid {pid}): {exc.strerror}; run `systemctl reload inspector`"
    if shutil.which("systemctl"):
        try:
            active = subprocess.run(["systemctl", "is-active", "--quiet", "inspector"], capture_output=True,
                                    timeout=30).returncode == 0
            if active:
                done = subprocess.run(["systemctl", "reload", "inspector"], capture_output=True, text=True, timeout=60)
                if done.returncode == 0:
                    return "asked the daemon to reload: systemctl reload inspector"
                return f"`systemctl reload inspector` failed: {done.stderr.strip()}; reload it by hand"
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"could not ask systemd to reload inspector ({exc}); reload it by hand"
    return "no inspector daemon is running; the next `inspector watch` loads the new model"


def prune_work(root: Path, keep: set[Path]) -> None:
    """Drop earlier retrain folders (image links and labels), except those a model still points at."""
    keep = {p.resolve() for p in keep}
    for folder in sorted(root.glob("20*")):
        if (folder / MARKER).is_file() and folder.resolve() not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def work_to_keep(work: Path, model_path: Path) -> set[Path]:
    """This run's folder and the training sets the live and the kept model learned from."""
    from inspector.imaging.modelmeta import read_meta

    keep = {work}
    for path in (model_path, previous_path(model_path)):
        try:
            recorded = ((read_meta(path).metrics or {}).get("retrain") or {}).get("dataset") if path.exists() else None
        except ModelError:
            recorded = None
        if recorded:
            keep.add(Path(recorded))
    return keep

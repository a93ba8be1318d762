"""Test shorthand for the store's one-dataclass writers: a verdict or rejection row from plain values."""

from inspector.store.store import FileVersion, RejectionRecord, Verdict, VerdictRecord


def record_verdict(store, path_raw, sha256, size, mtime_ns, model_sha256, p_abnormal, verdict, reason, threshold,
                   method, ready_to_commit_seconds=None, inference_seconds=None, inode=0, ctime_ns=None) -> str:
    """store.record_verdict of one file version (inode 0 unless given: tests that do not care about it)."""
    return store.record_verdict(VerdictRecord(
        FileVersion(path_raw, size, mtime_ns, inode, ctime_ns),
        Verdict(sha256, model_sha256, p_abnormal, verdict, reason, threshold, method, ready_to_commit_seconds,
                inference_seconds)))


def record_rejection(store, path_raw, sha256, size, mtime_ns, reason, message, inode=0, ctime_ns=None) -> str:
    return store.record_rejection(RejectionRecord(FileVersion(path_raw, size, mtime_ns, inode, ctime_ns), sha256,
                                                  reason, message))

"""The JSON records (`--format json`) of the commands whose library results print as lines: rescore, retrain,
user list. Plain dicts of plain values, the same facts as the text."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inspector.loop.rescore import RescoreSummary
    from inspector.loop.retrain import RetrainResult
    from inspector.web.users import User


def rescore_record(summary: RescoreSummary) -> dict:
    """`inspector rescore --format json`: the counts, the new verdicts, the changes and what was not found."""
    return {
        "model_sha256": summary.model_sha256, "todo": summary.todo, "scored": summary.scored,
        "new_verdicts": dict(sorted(summary.new_verdicts.items())),
        "unchanged": sum(n for (old, new), n in summary.changes.items() if old == new),
        "changed": [{"from": old, "to": new, "images": n} for (old, new), n in sorted(summary.changes.items())
                    if old != new],
        "not_found": [{"sha256": sha, "reason": why} for sha, why in summary.missing],
    }


def retrain_record(result: RetrainResult) -> dict:
    """`inspector retrain --format json`: the decision, its exit code and reasons, both sides' scores."""
    return {
        "decision": result.decision, "exit_code": result.exit_code, "reasons": list(result.reasons),
        "current": result.current.to_dict() if result.current else None,
        "candidate": result.candidate.to_dict() if result.candidate else None,
        "candidate_path": str(result.candidate_path) if result.candidate_path else None,
        "candidate_sha256": result.candidate_sha256, "reload": result.reload_message or None,
        "retrain_id": result.retrain_id,
    }


def user_record(user: User) -> dict:
    """`inspector user list --format json`: never the password hash, only whether there is one."""
    return {"name": user.name, "role": user.role, "login": "password" if user.password_hash else "proxy only",
            "created_at": user.created_at, "changed_at": user.changed_at}

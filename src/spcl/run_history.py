"""What a re-run replaces and why: config differences per stage, and the run's ``history/``.

When a re-run replaces a finished stage (its config sections changed, a stage it reads re-runs, or
``--from`` asked for it), :mod:`spcl.pipeline` first says which stages and why (the changed keys,
old → new), then moves each replaced stage folder into ``history/N/`` of the run directory with
the ``config.yaml`` it was made under, so that no finished result is ever deleted. Nothing here
imports torch.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spcl.base import atomic_write_bytes
from spcl.run_dir import CONFIG_FILE, HISTORY_DIR, REPLACED_FILE

__all__ = [
    "announcement",
    "changed_keys",
    "describe_change",
    "keep_in_history",
    "next_history_folder",
    "remove_stale_temp_files",
    "replacement_reason",
]

MAX_LISTED_KEYS = 6  # changed keys named per stage; the rest are counted


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping) or not tree:
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= _flatten(value, f"{prefix}{key}.")
    return out


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """The dotted keys whose value differs between two config trees: ``(key, old, new)``.

    A key present on one side only has ``None`` on the other.
    """
    flat_old, flat_new = _flatten(old), _flatten(new)
    keys = sorted(set(flat_old) | set(flat_new))
    return [
        (key, flat_old.get(key), flat_new.get(key))
        for key in keys
        if flat_old.get(key) != flat_new.get(key)
    ]


def describe_change(changes: list[tuple[str, Any, Any]]) -> str:
    """``"adapt.lambda_cl 1.0 → 0.5, run.seed 0 → 1"`` (at most :data:`MAX_LISTED_KEYS` keys)."""
    shown = [f"{key} {json.dumps(a)} → {json.dumps(b)}" for key, a, b in changes[:MAX_LISTED_KEYS]]
    more = len(changes) - MAX_LISTED_KEYS
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def replacement_reason(
    done: Mapping[str, Any],
    key: str,
    sections: Mapping[str, Any],
    upstream: Mapping[str, str],
    rerun_inputs: list[str],
) -> str:
    """Why a finished stage (its ``done.json``) is replaced; ``""`` when only forced (``--from``).

    Args:
        done: the stage's ``done.json`` (``fingerprint``, and ``config``/``upstream`` as recorded).
        key: the stage's fingerprint under the new config.
        sections: the stage's config sections under the new config.
        upstream: the fingerprints of the stages it reads, under the new config.
        rerun_inputs: the stages it reads that this run re-runs.
    """
    reasons = []
    if rerun_inputs:
        verb = "re-runs" if len(rerun_inputs) == 1 else "re-run"
        reasons.append(f"it reads {', '.join(rerun_inputs)}, which {verb}")
    if done["fingerprint"] == key:
        return "; ".join(reasons)
    if "config" in done:
        changes = changed_keys(done["config"], sections)
        if changes:
            reasons.append(f"config changed: {describe_change(changes)}")
    if "upstream" in done and not rerun_inputs:
        recorded = done["upstream"]
        changed = [n for n in upstream if n in recorded and upstream[n] != recorded[n]]
        reasons += [f"its input '{n}' changed since it ran" for n in changed]
        if set(recorded) != set(upstream):
            reasons.append(f"it now reads {sorted(upstream)} (was {sorted(recorded)})")
    return "; ".join(reasons) or "its fingerprint changed (finished by an older spcl)"


def announcement(replaced: Mapping[str, str], history: Path) -> list[str]:
    """The lines a run logs before replacing finished stages (none when it replaces none)."""
    if not replaced:
        return []
    head = f"re-running {len(replaced)} finished stage(s); their previous results move to "
    head += f"{history}:"
    return [head, *(f"  {name}: {why}" for name, why in replaced.items())]


def next_history_folder(run_dir: Path) -> Path:
    """``run_dir/history/N`` for the next free N (not created)."""
    root = run_dir / HISTORY_DIR
    numbers = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []
    return root / str(max(numbers, default=0) + 1)


def keep_in_history(folder: Path, stage_dir: Path, reasons: Mapping[str, str]) -> Path:
    """Move a finished ``stage_dir`` into the history ``folder``; returns its new path.

    The first move creates ``folder`` with the run's current ``config.yaml`` (the one the
    replaced results were made under) and ``replaced.json`` (stage → why it is replaced).
    """
    if not folder.is_dir():
        folder.mkdir(parents=True)
        config = stage_dir.parent / CONFIG_FILE
        if config.is_file():
            shutil.copy2(config, folder / CONFIG_FILE)
        atomic_write_bytes(
            folder / REPLACED_FILE, json.dumps(dict(reasons), indent=2, ensure_ascii=False).encode()
        )
    return stage_dir.rename(folder / stage_dir.name)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files (``.NAME.*.tmp``) that a killed process left in ``folder``.

    :func:`spcl.base.atomic_file` removes its temporary file on any exception, but not after
    kill -9 or a power cut; a resumed stage calls this first. Returns the removed paths.
    """
    removed = [p for p in folder.rglob(".*.tmp") if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed

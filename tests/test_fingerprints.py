"""The stage fingerprints of every shipped config are pinned: a finished run stays finished.

A user upgrades spcl and runs the same command on a finished run directory: every stage whose
fingerprint changed runs again (hours on a GPU). A key added to a config section changes the
fingerprint of every stage that reads the section unless ``spcl.run_state.NEUTRAL_DEFAULTS``
leaves it out at the value that computes what runs did before. This test keeps, for every shipped
config, what each stage's fingerprint hashes and the fingerprint itself
(``tests/shipped_fingerprints.json``), and names the keys that changed.

When a change is meant to re-run finished runs (a default that changes results, a fixed bug),
regenerate the file and say so in the change's note:

    PYTHONPATH=src python tests/test_fingerprints.py --update
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from spcl.config import PACKAGED_CONFIGS, load_config
from spcl.recipe import STAGES
from spcl.run_history import changed_keys
from spcl.run_state import fingerprint, stage_config

PINNED = Path(__file__).with_name("shipped_fingerprints.json")
REGENERATE = "PYTHONPATH=src python tests/test_fingerprints.py --update"
SHIPPED = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def shipped_prints(name: str) -> dict[str, Any]:
    """What each stage of shipped config ``name`` hashes (every stage, whether or not the config
    runs it, each without its upstream) and the fingerprint."""
    config = load_config(name, require_all=False)
    hashed: dict[str, Any] = {}
    for stage in STAGES:
        hashed |= stage_config(stage, config)
    prints = {stage.name: fingerprint(stage, config, {}) for stage in STAGES}
    return {"hashed": hashed, "fingerprints": prints}


def all_prints() -> dict[str, dict[str, Any]]:
    return {name: shipped_prints(name) for name in SHIPPED}


@pytest.fixture(scope="module")
def pinned() -> dict[str, dict[str, Any]]:
    return json.loads(PINNED.read_text())


def test_every_shipped_config_is_pinned(pinned: dict[str, dict[str, Any]]) -> None:
    assert sorted(pinned) == sorted(SHIPPED), f"shipped configs changed: {REGENERATE}"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_fingerprints_do_not_move(name: str, pinned: dict[str, dict[str, Any]]) -> None:
    if name not in pinned:
        pytest.fail(f"{name}: a new shipped config; pin it with {REGENERATE}")
    now, then = shipped_prints(name), pinned[name]
    changes = changed_keys(then["hashed"], now["hashed"])
    listed = ", ".join(f"{key} {old!r} → {new!r}" for key, old, new in changes[:8])
    assert not changes, (
        f"{name}: what its stages hash changed ({listed}): every finished run of it would run "
        f"again after an upgrade. A new key whose default computes what runs did before belongs "
        f"in spcl.run_state.NEUTRAL_DEFAULTS; a change meant to re-run finished runs: {REGENERATE}"
    )
    assert now["fingerprints"] == then["fingerprints"], (
        f"{name}: the same config hashes to other fingerprints (the recipe's stage sections or "
        f"the fingerprint function changed): finished runs would run again; {REGENERATE}"
    )


def test_a_key_added_without_a_neutral_default_fails_the_pin(
    pinned: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check itself: a key a stage hashes, added now, is caught and named."""
    import spcl.run_state as run_state

    original = run_state.config_to_dict

    def with_new_key(config: Any) -> dict[str, Any]:
        tree = original(config)
        tree["online"]["new_switch"] = False  # as if a release added online.new_switch
        return tree

    monkeypatch.setattr(run_state, "config_to_dict", with_new_key)
    now = shipped_prints("demo")
    changes = changed_keys(pinned["demo"]["hashed"], now["hashed"])
    assert changes == [("online.new_switch", None, False)]
    assert now["fingerprints"]["online"] != pinned["demo"]["fingerprints"]["online"]
    assert now["fingerprints"]["warmup"] == pinned["demo"]["fingerprints"]["warmup"]
    monkeypatch.setitem(run_state.NEUTRAL_DEFAULTS, "online.new_switch", False)
    assert shipped_prints("demo") == pinned["demo"]  # the neutral default keeps runs finished


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    PINNED.write_text(json.dumps(all_prints(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINNED}")

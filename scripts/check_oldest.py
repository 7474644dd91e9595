"""Check that requirements/oldest.txt pins exactly the minimums that setup.cfg declares.

The oldest set of ``scripts/test.sh`` installs geo_ws with every runtime dependency at
the version pinned in requirements/oldest.txt. That tests the declared minimums only if
each requirement of install_requires and of the extras in the ``test`` extra has a
``>=`` minimum, pinned there with ``==`` at that very version, and nothing else is
pinned. Standard library only; exit status 1 and one line per mismatch otherwise.

    python scripts/check_oldest.py
"""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lines(value: str) -> list[str]:
    """The non-empty lines of a setup.cfg list value, comments dropped."""
    return [line.split("#")[0].strip() for line in value.splitlines() if line.split("#")[0].strip()]


def declared(setup_cfg: Path) -> tuple[dict[str, str], list[str]]:
    """Name -> minimum of install_requires and of the extras in ``test``; and errors."""
    config = configparser.ConfigParser()
    config.read(setup_cfg, encoding="utf-8")
    name = normalize(config["metadata"]["name"])
    extras = config["options.extras_require"]
    requirements = lines(config["options"].get("install_requires", ""))
    for line in lines(extras.get("test", "")):
        match = REQUIREMENT.match(line)
        if match and normalize(match.group(1)) == name and match.group(2):
            for extra in match.group(2).strip("[]").split(","):
                requirements += lines(extras.get(extra.strip(), ""))
        else:
            requirements.append(line)
    minimums: dict[str, str] = {}
    errors: list[str] = []
    for requirement in requirements:
        match = REQUIREMENT.match(requirement)
        specifiers = [s.strip() for s in match.group(3).split(",")] if match else []
        lower = [s[2:].strip() for s in specifiers if s.startswith(">=")]
        if match is None or len(lower) != 1:
            errors.append(f"setup.cfg: {requirement!r} declares no single '>=' minimum")
            continue
        minimums[normalize(match.group(1))] = lower[0]
    return minimums, errors


def pinned(oldest_txt: Path) -> tuple[dict[str, str], list[str]]:
    """Name -> version of requirements/oldest.txt's ``name==version`` lines; and errors."""
    pins: dict[str, str] = {}
    errors: list[str] = []
    for line in lines(oldest_txt.read_text(encoding="utf-8")):
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            errors.append(f"{oldest_txt.name}: {line!r} is not name==version")
            continue
        pins[normalize(name.strip())] = version.strip()
    return pins, errors


def main() -> int:
    minimums, errors = declared(ROOT / "setup.cfg")
    pins, pin_errors = pinned(ROOT / "requirements" / "oldest.txt")
    errors += pin_errors
    for name, minimum in sorted(minimums.items()):
        if name not in pins:
            errors.append(f"requirements/oldest.txt: no pin for {name} (setup.cfg: >={minimum})")
        elif pins[name] != minimum:
            errors.append(
                f"requirements/oldest.txt: {name}=={pins[name]}, but setup.cfg declares "
                f">={minimum}: make them the same version"
            )
    for name in sorted(set(pins) - set(minimums)):
        errors.append(f"requirements/oldest.txt: {name} is pinned but setup.cfg does not need it")
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""What `make test` needs that it does not install, as the README states it.

The README says `make run` and `make test` work on a fresh machine with Python: they
create the virtualenv and install everything else. The suite also runs three programs
no wheel brings (promtool, kubectl, docker-compose) and fails without them, naming the
missing one only once it gets there. Every program a test looks up must be named in
the README's opening section, and installed by `.ci/run`, which stands for that fresh
machine.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path("README.md")
CI = Path(".ci/run")
LOOKUP = re.compile(r"""shutil\.which\(\s*["']([A-Za-z0-9_.-]+)["']\s*\)""")


def programs_the_tests_need() -> set[str]:
    return {
        name
        for path in Path("tests").rglob("*.py")
        if not path.name.startswith("test_docs_")
        for name in LOOKUP.findall(path.read_text(encoding="utf-8"))
    }


def test_the_tests_look_up_programs() -> None:
    assert {"promtool", "kubectl", "docker-compose"} <= programs_the_tests_need()


def test_the_readme_names_every_program_make_test_needs() -> None:
    opening = README.read_text(encoding="utf-8").split("\n## ", 1)[0]
    missing = {name for name in programs_the_tests_need() if f"`{name}`" not in opening}
    assert missing == set(), f"make test needs {sorted(missing)}; the README does not say so"


def test_ci_installs_every_program_make_test_needs() -> None:
    script = CI.read_text(encoding="utf-8")
    checked = set(re.findall(r"command -v ([A-Za-z0-9_.-]+)", script))
    assert programs_the_tests_need() <= checked

"""The "Redis access control" table of docs/security.md, made from deploy/users.acl, so the two agree.

Prints the table, or with ``--write`` puts it in docs/security.md between its markers;
``tests/test_docs.py`` fails while the page's table differs from the file's.

Usage::

    python scripts/acl_table.py            # print the table
    python scripts/acl_table.py --write    # update docs/security.md
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACL_FILE = ROOT / "deploy" / "users.acl"
SECURITY_DOC = ROOT / "docs" / "security.md"
BEGIN = "<!-- acl-table: made by scripts/acl_table.py from deploy/users.acl; do not edit by hand -->"
END = "<!-- /acl-table -->"

#: What each user of deploy/users.acl is for (a user missing here is an error: say what it is for).
PURPOSES = {
    "default": "clients that give no credentials: off",
    "rqplus-producer": "enqueue (every entry point), job status reads",
    "rqplus-worker": "workers, their scheduler, the bundled tasks (`payments:*`, `sandbox:*`)",
    "rqplus-dashboard": "`rqplus dashboard`: every page, requeue, delete, empty, compact, its sessions and audit",
    "rqplus-check": "`rqplus check`",
    "rqplus-operator": "stops a runaway script or function (`FUNCTION KILL`, `SCRIPT KILL`, `FUNCTION STATS`)",
    "rqplus-installer": "`rqplus check --install`: loads the function libraries (an admin credential: see below)",
}


def users(text: str) -> list[tuple[str, list[str]]]:
    """Each ``user`` line of an ACL file: (name, its rules)."""
    return [(words[1], words[2:]) for words in (line.split() for line in text.splitlines())
            if words and words[0] == "user"]


def _listed(items: list[str]) -> str:
    # a | inside a table cell ends the cell, even in a code span, unless escaped
    return ", ".join(f"`{item}`".replace("|", "\\|") for item in items) or "none"


def table(text: str) -> str:
    """The Markdown table of the users of ACL file ``text``: purpose, keys, channels, commands."""
    rows = ["| user | for | keys | channels | commands |", "|---|---|---|---|---|"]
    for name, rules in users(text):
        if name not in PURPOSES:
            raise KeyError(f"user {name} of deploy/users.acl has no purpose in scripts/acl_table.py: add one")
        keys = [rule[1:] for rule in rules if rule.startswith("~")]
        channels = [rule[1:] for rule in rules if rule.startswith("&")]
        commands = [rule[1:] for rule in rules if rule.startswith("+")]
        state = "" if "on" in rules else " (off)"
        rows.append(f"| `{name}`{state} | {PURPOSES[name]} | {_listed(keys)} | {_listed(channels)} | "
                    f"{_listed(commands)} |")
    return "\n".join(rows)


def _block(page: str) -> re.Match:
    found = re.search(rf"{re.escape(BEGIN)}\n(.*?){re.escape(END)}", page, re.S)
    if found is None:
        raise ValueError(f"docs/security.md lacks the markers {BEGIN} ... {END}")
    return found


def documented(page: str) -> str:
    """The table between the markers of ``page``."""
    return _block(page)[1].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="put the table in docs/security.md")
    made = table(ACL_FILE.read_text())
    if not parser.parse_args().write:
        print(made)
        return
    page = SECURITY_DOC.read_text()
    block = _block(page)
    SECURITY_DOC.write_text(f"{page[:block.start()]}{BEGIN}\n{made}\n{END}{page[block.end():]}")


if __name__ == "__main__":
    main()

"""The layout page (docs/architecture/layout.md) names what the tree holds: every top-level folder,
every service folder, every client and every benchmark module (a newcomer finds each in it)."""

from __future__ import annotations

import re
import subprocess

from tools.protos import ROOT


def _layout() -> str:
    page = (ROOT / "docs" / "architecture" / "layout.md").read_text()
    return re.search(r"^```\n(.*?)```", page, flags=re.S | re.M).group(1)  # type: ignore[union-attr]


def _tracked() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()


def test_the_layout_names_every_top_level_folder_service_client_and_bench_module():
    layout = _layout()
    tracked = _tracked()
    folders = {path.split("/")[0] for path in tracked if "/" in path}
    services = {path.split("/")[1] for path in tracked if path.startswith("services/") and path.count("/") >= 2}
    clients = {path.split("/")[1] for path in tracked if path.startswith("clients/") and path.count("/") >= 2}
    bench = {path.split("/")[1] for path in tracked if re.fullmatch(r"bench/[a-z]+\.py", path)} - {"__init__.py"}
    missing = [f"{folder}/" for folder in folders if f"{folder}/" not in layout]
    missing += [f"services/{name}/" for name in services if f"services/{name}/" not in layout]
    missing += [f"clients/{name}/" for name in clients if f"clients/{name}/" not in layout]
    missing += [name for name in bench if name not in layout]
    assert missing == [], f"docs/architecture/layout.md does not name: {sorted(missing)}"

"""ns-nifr-demo runs the whole chain (synth -> train -> refine -> report) on the tiny scene."""

from __future__ import annotations

import json
from pathlib import Path

from nifr_ns.scripts.demo import DemoCommand, main


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    config_path = main(DemoCommand(output=tmp_path / "demo", preset="tiny", iterations=20))
    assert config_path.is_file()
    report = json.loads((tmp_path / "demo" / "refine" / "report.json").read_text())
    assert report["summary"]["queries"] == 4
    assert "nifr (features)" in report["metrics"]
    assert (tmp_path / "demo" / "refine" / "errors.png").is_file()

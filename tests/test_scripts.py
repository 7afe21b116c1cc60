"""The shell scripts the README documents parse, and their usage text names every stage they run."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_zoo_script_usage_names_every_stage():
    script = ROOT / "scripts" / "zoo_fmnist.sh"
    stages = re.findall(r"^  (\w+)\)", script.read_text(), re.M)
    assert {"rocl", "simclr", "at", "trades", "rocl_at", "simclr_at", "alf", "full"} <= set(stages)
    proc = subprocess.run(["bash", str(script), "no-such-stage"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    for stage in stages:
        assert f"zoo_fmnist.sh {stage} " in proc.stdout, stage

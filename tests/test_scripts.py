"""The shell scripts the README documents parse, and their usage text names every stage they run."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_device_script_prepares_what_the_bare_gpu_machine_lacks_and_says_what_is_missing(tmp_path):
    """scripts/device.sh in a copy of the tree: usage and a missing .device/ are clear errors; prepare brings the
    dataset and the Python sources of the two packages the GPU image lacks, without the 44 MB example weights."""
    import shutil
    import sys

    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "device.sh", tmp_path / "scripts")
    script = ["bash", str(tmp_path / "scripts" / "device.sh")]
    usage = subprocess.run(script, capture_output=True, text=True)
    assert usage.returncode == 2 and "prepare | run" in usage.stderr
    bare = subprocess.run([*script, "run", "all"], capture_output=True, text=True)
    assert bare.returncode == 2 and "device.sh prepare" in bare.stderr
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    done = subprocess.run([*script, "prepare"], capture_output=True, text=True, env={"PYTHON": sys.executable,
                                                                                       "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    dev = tmp_path / ".device"
    assert len(list((dev / "fmnist").glob("*.gz"))) == 4
    assert (dev / "site" / "pyautoattack" / "autoattack.py").is_file() and (dev / "site" / "timm" / "__init__.py").is_file()
    assert not list(dev.rglob("*.pt")) and sum(f.stat().st_size for f in dev.rglob("*") if f.is_file()) < 45e6

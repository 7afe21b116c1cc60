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
    assert usage.returncode == 2 and "prepare | slim | run" in usage.stderr
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


def test_device_slim_keeps_the_committed_weights_off_the_copy_sent_and_unslim_restores_the_index(tmp_path):
    """The device tool sends tracked and untracked-not-ignored files: slim leaves the weights here but in neither
    set, refuses to run twice or before prepare, and unslim leaves git as it was."""
    import shutil

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout

    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "device.sh", tmp_path / "scripts")
    weights = ["rocl_zoo/weights/m/model.safetensors", "results/curves/r/best/model.safetensors"]
    for f in [*weights, "rocl_zoo/weights/m/config.json", "README.md"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"x" * 10)
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "tree")
    script = ["bash", str(tmp_path / "scripts" / "device.sh")]
    early = subprocess.run([*script, "slim"], capture_output=True, text=True)
    assert early.returncode == 2 and "prepare" in early.stderr
    (tmp_path / ".device").mkdir()
    (tmp_path / ".git" / "info" / "exclude").write_text("/.device/\n")
    assert subprocess.run([*script, "slim"], capture_output=True, text=True).returncode == 0
    sent = set(git("ls-files", "-co", "--exclude-standard").split())
    assert sent == {"scripts/device.sh", "rocl_zoo/weights/m/config.json", "README.md"}
    assert all((tmp_path / f).is_file() for f in weights)
    twice = subprocess.run([*script, "slim"], capture_output=True, text=True)
    assert twice.returncode == 2 and "unslim" in twice.stderr
    assert subprocess.run([*script, "unslim"], capture_output=True, text=True).returncode == 0
    assert git("status", "--porcelain") == "" and set(weights) <= set(git("ls-files").split())
    assert (tmp_path / ".git" / "info" / "exclude").read_text() == "/.device/\n"


def test_devpack_round_trip_keeps_each_tensor_once_and_rebuilds_files_byte_for_byte(tmp_path):
    """scripts/devpack.py: what changed after the marker travels (checkpoints excluded), a tensor two safetensors
    files share is packed once, and unpacking rebuilds every file exactly; paths outside the tree are refused."""
    import io
    import json
    import os
    import sys
    import tarfile

    import torch
    from safetensors.torch import save_file

    src, dst = tmp_path / "src", tmp_path / "dst"
    old = src / "results" / "old.json"
    old.parent.mkdir(parents=True)
    old.write_text("{}")
    os.utime(old, (1, 1))
    marker = src / "start"
    marker.touch()
    os.utime(marker, (marker.stat().st_mtime - 5,) * 2)  # file times are coarse: files written next share its time
    shared = torch.randn(256, 256)
    (src / "results" / "enc").mkdir()
    save_file({"w": shared, "b": torch.zeros(3)}, src / "results" / "enc" / "model.safetensors")
    (src / "runs" / "head").mkdir(parents=True)
    save_file({"encoder.w": shared, "fc": torch.ones(10, 2)}, src / "runs" / "head" / "model.safetensors")
    (src / "runs" / "head" / "config.json").write_text('{"a": 1}')
    (src / "runs" / "checkpoint.pt").write_bytes(b"x" * 100)
    (src / "results" / "stamps.json").write_text('{"train/a": "new", "eval/b": "b"}')
    tool = [sys.executable, str(ROOT / "scripts" / "devpack.py")]
    packed = subprocess.run([*tool, "pack", "--newer", str(marker), "--exclude", "*/checkpoint.pt", "results",
                             "runs"], cwd=src, capture_output=True, check=True).stdout
    assert len(packed) < shared.numel() * 4 * 1.5  # the shared 256 KB tensor once, not twice
    (dst / "results").mkdir(parents=True)
    (dst / "results" / "stamps.json").write_text('{"train/a": "old", "train/here": "h"}')
    subprocess.run([*tool, "unpack"], cwd=dst, input=packed, capture_output=True, check=True)
    # the run's records join the ones already here rather than replace them
    assert json.loads((dst / "results" / "stamps.json").read_text()) == {"train/a": "new", "eval/b": "b",
                                                                         "train/here": "h"}
    got = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file() and p.name != "stamps.json")
    assert got == ["results/enc/model.safetensors", "runs/head/config.json", "runs/head/model.safetensors"]
    for rel in got:
        assert (dst / rel).read_bytes() == (src / rel).read_bytes()
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("files/../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    bad = subprocess.run([*tool, "unpack"], cwd=dst, input=evil.getvalue(), capture_output=True)
    assert bad.returncode != 0 and b"outside the repository" in bad.stderr and not (tmp_path / "escape.txt").exists()


def test_bn_statistics_recomputes_a_copy_and_reports_the_three_settings(capsys):
    import sys

    import torch
    from torch import nn

    sys.path.insert(0, str(ROOT / "scripts"))
    import bn_statistics

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)).eval()
    images = torch.rand(10, 1, 6, 6) * 3 + 1
    copy = bn_statistics.recalibrated(model, images, batch_size=4)  # three batches, averaged
    with torch.no_grad():
        batches = [model[0](images[i:i + 4]).mean((0, 2, 3)) for i in (0, 4, 8)]
    torch.testing.assert_close(copy[1].running_mean, torch.stack(batches).mean(0))
    assert torch.equal(model[1].running_mean, torch.zeros(3)) and not copy.training  # the model is left as it was
    assert bn_statistics.main(["cnn4_rocl.fmnist_at", "--attacks", "clean", "--n-examples", "20",
                               "--calibration", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0].strip() for line in lines[1:]] == [
        "as trained", "recomputed on clean images", "recomputed on PGD-10 images"]
    assert all("clean " in line for line in lines[1:])


def test_pseudo_labels_scores_each_encoders_clusters_against_the_classes(capsys):
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import pseudo_labels

    assert pseudo_labels.main(["cnn4_rocl.fmnist_simclr", "--subset", "300", "--k", "10,30"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| cnn4")]
    assert [r[1] for r in rows] == ["10", "30"] and rows[1][2] == "–"  # one-to-one matching only with k = classes
    accuracy, purity10, purity30 = float(rows[0][2]), float(rows[0][3]), float(rows[1][3])
    assert 10 <= accuracy <= purity10 <= 100 and purity30 >= 20  # a converged SimCLR clusters well above chance

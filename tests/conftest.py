"""Test-wide settings: never touch the network, keep torch small on a 2-core machine."""
import os
import socket
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402



# The files that take minutes, each to a worker of its own first (`pytest -n 2 --dist loadfile
# --no-loadscope-reorder`, make test), the short ones after: a long file handed out last keeps the others waiting.
# The toy reproduction of the whole zoo (~6 of the suite's ~16 CPU-minutes), the shipped weights' quick checks (~5).
LONGEST_FIRST = ("test_reproduce.py", "test_zoo_weights.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
               else len(LONGEST_FIRST))  # stable: the order is otherwise kept


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded, on one torch thread. The tests run small ops, often beside a server or worker processes; a second
    OpenMP thread that gets descheduled makes every op wait for it (measured up to 50x slower on 2 shared cores).
    Code under test may change the thread count (the training CLIs' --threads): it is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """A private, empty Hugging Face cache for tests that download."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return cache


@pytest.fixture
def torchrun():
    """torchrun(MODULE): the command that runs `python -m MODULE` as 2 processes (gloo on the CPU) on a free port."""
    def command(module: str, processes: int = 2) -> list[str]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                "--master_addr=127.0.0.1", f"--master_port={port}", "-m", module]
    return command

"""The threat model's one home: budgets parsed, printed, checked and defaulted, and the PGD step rules."""
import pytest

from rocl_zoo import threat as T
from rocl_zoo.errors import ConfigError


def test_budgets():
    assert T.parse_eps("8/255") == pytest.approx(8 / 255) and T.parse_eps(0.1) == 0.1
    assert T.eps_str(8 / 255) == "8/255" and T.eps_str(0.1) == "0.1" and T.eps_str(None) == "?"
    assert T.default_eps("fashion_mnist") == 0.1 and T.default_eps("cifar10") == pytest.approx(8 / 255)
    assert T.default_eps("fashion_mnist", "l2") == 0.5
    for bad in ("eight", "1/0", "-1", "nan"):
        with pytest.raises(ConfigError):
            T.parse_eps(bad)
    with pytest.raises(ConfigError, match="8/255"):
        T.check_eps(8, "linf")
    with pytest.raises(ConfigError, match="norm"):
        T.check_eps(0.1, "l1")
    T.check_eps(28.0, "l2", dims=784)  # two 28x28 images are at most 28 apart in l2
    with pytest.raises(ConfigError, match="larger than any two images of 784 values"):
        T.check_eps(28.01, "l2", dims=784)


def test_step_rules():
    assert T.madry_step(0.1, 10) == pytest.approx(0.025)  # training attacks and attacks.pgd's default
    assert T.eval_pgd_step(0.1, 20, "linf") == pytest.approx(0.01)  # PGD-20 at eps/10
    assert T.eval_pgd_step(0.1, 5, "linf") == pytest.approx(0.05) and T.eval_pgd_step(1.5, 20, "l2") == 0.3
    assert T.alf_step(8 / 255) == pytest.approx(0.007) and T.alf_step(0.1) == pytest.approx(0.0223, abs=1e-4)


def test_every_user_takes_the_rules_from_here():
    """The step rules and budgets exist once: no module computes them itself."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in [*(root / "rocl_zoo").rglob("*.py"), root / "app_logic.py", *(root / "training").glob("*.py")]:
        if path.name == "threat.py":
            continue
        text = path.read_text()
        assert not re.search(r"=\s*\(?2\.5 \* \w*eps", text), path  # Madry's step computed in place
        assert not re.search(r"/ 10 if", text), path  # the evaluation's step
        assert "Fraction(" not in text and "0.007 / (8 / 255)" not in text, path

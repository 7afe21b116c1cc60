"""Every command line shares its runtime flags and reports errors the same way."""
import argparse

import pytest

from rocl_zoo import cli
from rocl_zoo.errors import DataError
from rocl_zoo.loop import TrainingInterrupted


def test_errors_become_exit_codes_with_a_message(capsys):
    def fails(exc):
        def body(args):
            raise exc
        return body

    args = argparse.Namespace(threads=None)
    assert cli.run(fails(DataError("no such dataset; pass --data-root")), args) == 2
    assert cli.run(fails(ImportError("AutoAttack needs pyautoattack")), args) == 2
    assert cli.run(fails(TrainingInterrupted("stopped at step 3")), args) == 130
    err = capsys.readouterr().err
    assert "error: no such dataset" in err and "error: AutoAttack needs" in err and "interrupted: stopped" in err
    assert cli.run(lambda a: None, args) == 0 and cli.run(lambda a: 3, args) == 3
    with pytest.raises(ZeroDivisionError):  # a bug is not dressed up as a user error
        cli.run(fails(ZeroDivisionError()), args)


@pytest.mark.parametrize("module", ["rocl_zoo.evaluate", "rocl_zoo.finetune", "rocl_zoo.predict",
                                    "training.pretrain"])
def test_the_runtime_flags_mean_the_same_everywhere(module, capsys):
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--device DEVICE auto (CUDA when there is one), cpu or cuda (default auto)" in text
    assert "--threads THREADS torch CPU threads" in text

"""synth/ and eval/ install as genpi.synth and genpi.eval, in a wheel as in the editable install."""

import subprocess
import sys
import zipfile

import pytest


def test_editable_install_imports_the_namespaced_packages():
    import genpi.eval
    import genpi.synth

    assert genpi.synth.__name__ == "genpi.synth" and genpi.eval.__name__ == "genpi.eval"


@pytest.mark.slow  # builds a wheel in a subprocess
def test_wheel_holds_synth_eval_and_templates(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
                   check=True)
    wheel = next(tmp_path.glob("genpi-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("genpi/cli.py", "genpi/training/run.py", "genpi/synth/pipeline.py", "genpi/synth/templates/user.txt",
                 "genpi/synth/templates/environment.txt", "genpi/eval/evaluate.py"):
        assert path in names, path
    assert not any(n.startswith(("synth/", "eval/", "tests/")) for n in names)

"""The CLI in-process: every subcommand's --help, and user errors as one line with a non-zero exit."""

import pytest

from genpi.cli import build_parser, main


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "synth" in out and "examples:" in out


# The one place where --help is tested: each subcommand's usage, its examples, and the flags a user looks for.
FLAGS = {
    "synth": ("--prompt", "--base-url", "--num-inputs", "--max-turns", "--concurrency", "--seed", "--dry-run",
              "--overwrite", "--max-new-tokens"),
    "train": ("--data", "--out", "--strategy", "--training-args", "--activation-checkpointing"),
    "export": ("--adapter", "--out", "--merge"),
    "eval": ("--adapter", "--baseline", "--checker", "--inputs", "--no-overlap-check", "--latency-inputs"),
    "serve": ("--adapter", "--model", "--port"),
}


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: genpi " + command in out
    if command in FLAGS:
        assert f"genpi {command} --" in out  # the examples epilog
        for flag in FLAGS[command]:
            assert flag in out
    assert "(default: None)" not in out and out.count("(default:") == out.count("default:")  # each default once


def test_a_choice_field_lists_its_choices_and_a_wrong_one_is_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "{genpi,seqkd,seqkd_kl,genpi_kl,prepend,promptintern,onpolicy,prompt_tuning,kv_prefix}" in capsys.readouterr().out
    assert main(["train", "--data", "r", "--strategy", "nope"]) == 2
    assert capsys.readouterr().err.strip() == ("genpi: error: unknown --strategy 'nope': choose one of genpi, seqkd, "
                                               "seqkd_kl, genpi_kl, prepend, promptintern, onpolicy, prompt_tuning, "
                                               "kv_prefix")


def test_unknown_flag_fails(capsys):
    with pytest.raises(SystemExit) as e:
        main(["synth", "--prompt", "x.txt", "--num-inptus", "3"])
    assert e.value.code == 2


def test_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["synth", "--prompt", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "nope.txt does not exist" in err
    assert not (tmp_path / "run").exists()


def test_dry_run_from_the_cli(tmp_path, capsys):
    code = main(["synth", "--prompt", "examples/support_agent.txt", "--out", str(tmp_path / "run"), "--dry-run"])
    assert code == 0
    assert "Northwind Rail" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_a_recipe_run_with_python_gives_one_line_errors_like_genpi_run(tmp_path):
    """`python recipes/quickstart.py` goes through the CLI: from the wrong directory it says so in one line."""
    import subprocess
    import sys
    from pathlib import Path

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.py"
    proc = subprocess.run([sys.executable, str(recipe), "--out", str(tmp_path / "qs")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("genpi: error: prompt file examples/bash_agent.txt does not exist")
    assert proc.stderr.count("\n") == 1

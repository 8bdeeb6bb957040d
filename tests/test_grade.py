"""The command line: bad arguments fail at once, naming the fix."""
import pytest

from labkit.grade import parse_args


@pytest.mark.parametrize("argv, message", [
    ([], "give submissions to grade, or --self"),
    (["a", "--self"], "not both"),
    (["a"], "--out is required"),
    (["a", "--out", "g", "--jobs", "0"], "--jobs and --epochs must be at least 1"),
    (["a", "--out", "g", "--reference", "/nonexistent"], "is not a workbook checkout"),
    (["a", "--out", "g", "--hidden", "/nonexistent"], "--hidden /nonexistent is not a folder"),
])
def test_bad_arguments_are_refused_with_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_self_check_writes_under_the_checkout_and_never_uses_hidden_tests():
    args = parse_args(["--self"])
    assert args.self_check and args.hidden is None and args.out.parts[-2:] == ("build", "self-check")

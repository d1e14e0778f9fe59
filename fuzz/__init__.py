"""Fuzzing: atheris harnesses (decode.py, options.py; their seed corpus under corpus/) and
`python -m fuzz.run --minutes N` for long runs. tests/mesh/test_fuzz.py runs each briefly in CI."""

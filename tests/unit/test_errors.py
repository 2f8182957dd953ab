from opskit.core import errors
from opskit.core.errors import ExitCode


def test_exit_codes_match_the_contract():
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3]


def test_every_error_has_a_default_message_and_a_contract_exit_code():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    for cls in subclasses(errors.OpskitError):
        error = cls()
        assert error.message, cls
        assert error.exit_code in (ExitCode.PROBLEM_FOUND, ExitCode.BAD_INPUT, ExitCode.ENVIRONMENT)


def test_no_database_message_is_the_documented_one():
    assert errors.NoDatabase().message == "no database: set OPSKIT_DATABASE_URL or run `opskit up`"
    assert errors.NoDatabase.exit_code == ExitCode.ENVIRONMENT

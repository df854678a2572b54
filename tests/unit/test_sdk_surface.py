import inspect

import producers


def test_all_is_sorted_and_complete() -> None:
    assert producers.__all__ == sorted(producers.__all__)
    public = {
        name for name in dir(producers) if not name.startswith("_") and not inspect.ismodule(getattr(producers, name))
    }
    assert public == set(producers.__all__)


def test_the_sdks_errors_are_one_tree_in_its_exceptions_module() -> None:
    exported = [getattr(producers, name) for name in producers.__all__]
    errors = [obj for obj in exported if inspect.isclass(obj) and issubclass(obj, Exception)]
    assert len(errors) == 7
    for error in errors:
        assert issubclass(error, producers.SDKError) and error.__module__ == "producers._exceptions", error
    refusals = ("BudgetExceededError", "SessionLimitExceeded", "CostConfirmationRequired", "CircuitOpen")
    assert all(issubclass(getattr(producers, name), producers.CallRefused) for name in refusals)

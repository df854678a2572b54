import inspect

import producers


def test_all_is_sorted_and_complete() -> None:
    assert producers.__all__ == sorted(producers.__all__)
    public = {
        name for name in dir(producers) if not name.startswith("_") and not inspect.ismodule(getattr(producers, name))
    }
    assert public == set(producers.__all__)

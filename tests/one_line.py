"Shared by the test files: checks that an error is one line naming what to fix."
import pytest


def refused(call, *fragments, error=ValueError):
    "The message of the error `call()` raises, checked to be one line holding each of `fragments`."
    with pytest.raises(error) as caught: call()
    message = str(caught.value)
    assert '\n' not in message, message
    for fragment in fragments: assert fragment in message, (fragment, message)
    return message

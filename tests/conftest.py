import pytest, torch


@pytest.fixture(autouse=True)
def one_thread():
    "One CPU thread per test: the tensors are tiny, and on a busy 2-core machine two threads wait on each other."
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

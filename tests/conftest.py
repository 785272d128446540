import pytest, torch


@pytest.fixture(scope='session', autouse=True)
def one_thread_everywhere():
    "Module-wide fixtures run in one thread too, so a run one of them makes matches the run a test repeats bit for bit."
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    "One CPU thread per test: the tensors are tiny, and on a busy 2-core machine two threads wait on each other."
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

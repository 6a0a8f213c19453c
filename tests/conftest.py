import copy

import pytest
import torch

import wgraph


def outputs_match(model, graph, x, index=0, rtol=1e-9):
    """Load network ``index`` of ``graph`` into a copy of ``model`` and compare outputs on ``x``."""
    other = wgraph.load_into(copy.deepcopy(model), graph, index)
    with torch.no_grad():
        a, b = model(x), other(x)
    torch.testing.assert_close(b, a, rtol=rtol, atol=rtol * max(1.0, a.abs().max().item()))


def assert_state_dict_exact(got, want):
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        assert torch.equal(got[k], want[k]), k


@pytest.fixture
def seeded():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _every_layout_is_consistent():
    """Every Layout the suite builds (conversions of every architecture it covers) passes the file
    checks that untrusted layouts go through (:meth:`wgraph.Layout.check`): a check that rejected
    a real architecture would make its saved graphs unreadable."""
    original = wgraph.Layout.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.check()

    wgraph.Layout.__init__ = init
    yield
    wgraph.Layout.__init__ = original

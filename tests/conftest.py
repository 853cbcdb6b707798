import pytest

from polymodal.data.synthetic.shapes import ShapesConfig, generate


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A small ShapesWorld shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("shapes")
    generate(out, ShapesConfig(n_train=600, n_val=100, n_test=200, n_unseen=100, seed=3), workers=1, progress=False)
    return out

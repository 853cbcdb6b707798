import os

import pytest
import torch

from polymodal.data.synthetic.shapes import ShapesConfig, generate

# xdist workers share the cores: each gets its share of threads, or tiny matrix products spend
# their time waiting for each other (measured: 15x slower training steps with 2 workers x 2 threads).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A small ShapesWorld shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("shapes")
    generate(out, ShapesConfig(n_train=600, n_val=100, n_test=200, n_unseen=100, seed=3), workers=1, progress=False)
    return out

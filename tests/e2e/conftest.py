"""Runs that several end-to-end test files read, each launched once per pytest session."""

import pytest
from recipe_runs import TINY_RUN, shared_run, train


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """recipes/tiny_cpu.yaml on 2 ranks, 6 steps at its constant learning rate, saving after steps 3 and 6: the
    uninterrupted run of the resume test, the regression run the GAN stage starts from, and the run without
    evaluation that in-loop evaluation must leave bit-identical. Read it, never write into it."""

    def build(run_dir):
        proc = train("recipes/tiny_cpu.yaml", run_dir, *TINY_RUN)
        assert proc.returncode == 0, proc.stderr[-4000:]

    return shared_run(tmp_path_factory, "tiny_run", build)

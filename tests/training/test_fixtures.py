"""The committed fixtures' recipes (tests/fixtures/build.py) train and export here as they did there: every task's
export path (text classifiers, numeric sequences with their step-wise graph, the language model) runs in the
suite, and `make fixtures` keeps working."""

from rnnserve.service.core.package import read_package
from rnnserve.service.runtime.loader import open_model
from tests.fixtures.build import FIXTURES, build_models, build_tasks, reviews_csv


def test_the_fixture_recipes_export_every_task_through_its_gates(tmp_path, data_dir):
    reviews = reviews_csv(tmp_path)
    built = [*build_models(tmp_path / "models", reviews).iterdir(),
             *build_tasks(tmp_path / "tasks" / "models", reviews).iterdir()]
    committed = sorted(p.name for folder in ("models", "tasks") for p in (FIXTURES / folder).iterdir())
    assert sorted(p.name for p in built) == committed
    for folder in built:
        package = read_package(folder / "1")
        meta = package.metadata
        assert meta.parity["max_abs_diff"] <= meta.parity["atol"], folder.name
        # export writes a text classifier's drift profile, from its training split
        assert ("profile.json" in package.manifest.files) == (meta.task == "text-classification"), folder.name
        if meta.stepwise:
            assert meta.parity["stepwise"]["max_abs_diff"] <= meta.parity["atol"], folder.name
        with open_model(folder / "1"):
            pass  # the runtime loads it: its checks pass

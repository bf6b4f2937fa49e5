"""The README's set-up commands are the ones CI and users run."""
import re

from tests.conftest import REPO


def readme_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_starts_with_the_train_and_test_commands():
    train, test = readme_commands()[:2]
    assert "engine train" in train and "--data demo" in train and "--no-pretrained" in train
    assert "pytest" in test


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [readme_commands()[1]]

"""Security by construction: no shell strings, nothing unpickled, catalog paths confined. The
behaviour is tested end to end elsewhere (path refusal and pickle checkpoints in
test_bad_input.py, pickled HDF5 attributes in test_catalogs.py); this checks the source itself."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "annotate"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _calls(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_shell_and_no_unpickling(path):
    for node, name in _calls(path):
        where = f"{path.name}:{node.lineno}"
        assert name not in ("os.system", "os.popen", "pickle.load", "pickle.loads", "torch.load", "yaml.load",
                            "eval", "exec"), where
        for keyword in node.keywords:
            if keyword.arg == "shell":
                assert isinstance(keyword.value, ast.Constant) and keyword.value.value is False, where
            if keyword.arg == "allow_pickle":
                assert isinstance(keyword.value, ast.Constant) and keyword.value.value is False, where
        if name.endswith("subprocess.run") or name.endswith("subprocess.Popen"):
            command = node.args[0] if node.args else None
            assert not isinstance(command, (ast.Constant, ast.JoinedStr, ast.BinOp)), f"{where}: a command string"
        if name in ("np.load", "numpy.load"):
            assert any(k.arg == "allow_pickle" for k in node.keywords), f"{where}: np.load without allow_pickle=False"


def test_the_sbatch_scripts_quote_every_argument():
    for script in (PACKAGE.parent / "slurm").glob("*.sbatch"):
        text = script.read_text()
        assert "eval " not in text, script.name
        for variable in ("$RECIPE", "$OUT", "$CATALOG", "$SHARD_SIZE", "$STORE", "$IMAGES", "$ENCODING"):
            for line in text.splitlines():
                if variable in line and not line.lstrip().startswith("#") and "echo" not in line:
                    assert f'"{variable}"' in line or f'"${{{variable[1:]}' in line, f"{script.name}: {line}"

"""The README's measured tables are generated from committed results files and must agree with them."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import readme_tables  # noqa: E402


def test_readme_tables_match_their_results_files():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "readme_tables.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = "".join(doc.read_text() for doc in readme_tables.DOCS)
    for name in readme_tables.BLOCKS:
        assert f"<!-- results:{name} -->" in text, f"README and docs lost the generated {name} block"


def test_a_hand_edited_figure_is_caught(tmp_path):
    text = (REPO / "docs" / "limits.md").read_text()
    new, changed = readme_tables.render(text.replace("| 37.03 |", "| 38.03 |", 1))
    assert "teacher-runs" in changed and new == text


def test_a_missing_results_file_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(readme_tables, "RESULTS", tmp_path)
    with pytest.raises(readme_tables.MissingResults, match="does not exist: run the benchmark"):
        readme_tables.render((REPO / "docs" / "results.md").read_text())
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- results:pareto -->\nold\n<!-- /results:pareto -->\n")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "readme_tables.py"), "--check", "--readme",
                             str(readme)], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_the_readme_python_snippet_runs(tmp_path, monkeypatch):
    """The README's Python example, run as written against a small student of the reference teacher's geometry."""
    import json
    import re

    from turbovaed import presets, teachers
    from turbovaed.student import StudentDecoder

    code = re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    folder = tmp_path / "runs" / "quickstart" / "student"
    StudentDecoder(presets.student_config(teachers.get_spec("reference"), mini=True)).save_pretrained(folder)
    (folder / "latent_norm.json").write_text(json.dumps(teachers.load("reference").norm.to_dict()))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "out.mp4").stat().st_size > 0

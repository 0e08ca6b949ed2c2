"""The remote-code modules import one way: no circles, every relative import at the top of its module, the frame /
pause / chunk helpers in a leaf that imports nothing of the package, and each module imports first on its own."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import modeling_hubert_gpt

PACKAGE = Path(modeling_hubert_gpt.__file__).parent
MODULES = sorted(path.stem for path in PACKAGE.glob("*_hubert_gpt.py"))


def relative_imports(name):
    """{module: [(imported module, at the module's top level)]} for the package module `name`."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    top = {id(node) for node in tree.body}
    return [(node.module, id(node) in top) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1]


def cycles(graph):
    """Every import cycle of `graph` ({module: set of modules}), each as the list of modules on it."""
    found, state = [], {}  # state: 1 on the current path, 2 done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_cycle_finder_finds_a_circle_and_a_self_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}) == [["a", "b", "c", "a"], ["d", "d"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_relative_imports_go_one_way_and_sit_at_the_top():
    graph = {name: {module for module, _ in relative_imports(name)} for name in MODULES}
    assert set().union(*graph.values()) <= set(MODULES)
    assert cycles(graph) == []
    lazy = {name: [module for module, at_top in relative_imports(name) if not at_top] for name in MODULES}
    assert {name: modules for name, modules in lazy.items() if modules} == {}


def test_frame_helpers_live_in_a_leaf_module():
    tree = ast.parse((PACKAGE / "frames_hubert_gpt.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {"." * node.level + (node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"math", "torch"}
    from modeling_hubert_gpt import alignment_hubert_gpt, frames_hubert_gpt, pipeline_hubert_gpt, segments_hubert_gpt

    for name in ("samples_per_frame", "seconds_per_frame", "batch_quiet"):
        assert getattr(alignment_hubert_gpt, name, None) in (None, getattr(frames_hubert_gpt, name))
    for name in ("chunk_spans", "stitch_posteriors", "samples_per_frame"):
        assert getattr(pipeline_hubert_gpt, name) is getattr(frames_hubert_gpt, name)  # defined once, used here
    for name in ("quiet_frames", "pauses"):
        assert getattr(segments_hubert_gpt, name) is getattr(frames_hubert_gpt, name)


def test_each_module_imports_first_in_a_fresh_process(tmp_path):
    # One copy of the files per module (as a remote-code folder is: files side by side, an empty __init__), so each
    # module is the first of its package to be imported; one process for all, to pay for torch's import once.
    for k, name in enumerate(MODULES):
        folder = tmp_path / f"copy{k}"
        folder.mkdir()
        (folder / "__init__.py").write_text("")
        for path in PACKAGE.glob("*_hubert_gpt.py"):
            shutil.copy(path, folder)
    script = "import importlib\n" + "".join(
        f"importlib.import_module('copy{k}.{name}')\n" for k, name in enumerate(MODULES)) + "print('imported', flush=True)"
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "imported"

"""The shipped command table equals the one the experiment classes generate, and the parser needs no torch."""

from __future__ import annotations

import json
import subprocess
import sys

from lmscope.cli import manifest


def test_the_shipped_table_matches_the_experiment_classes() -> None:
    shipped = manifest.read()
    built = json.loads(json.dumps(manifest.build()))  # tuples as lists, as in the file
    stale = sorted({e["command"] for e in built} ^ {e["command"] for e in shipped}) or [
        b["command"] for b, s in zip(built, shipped, strict=True) if b != s
    ]
    assert not stale, f"src/lmscope/cli/manifest.json is stale for {stale}: run python -m lmscope.cli.manifest"


def test_help_and_argument_errors_import_no_torch() -> None:
    code = (
        "import sys\n"
        "from lmscope.cli.main import main\n"
        "for argv in (['--help'], ['lens', '--help'], ['patch', '--copies', 'abc'], ['nonsense'],\n"
        "             ['serve', '--help'], ['serve', '/no/such/folder'], ['serve', '.', '--port', '-1']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, 2), (argv, e.code)\n"
        "assert 'torch' not in sys.modules, 'the parser imported torch'\n"
        "import lmscope\n"
        "assert 'torch' not in sys.modules, 'import lmscope imported torch'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]

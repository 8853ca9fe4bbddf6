"""`lmscope steer` end to end on a tiny model: extract, export (layer 0 refused), apply the exported file."""

from __future__ import annotations

import gguf

from lmscope.cli.main import main
from lmscope.steering import SteeringVector


def test_steer_extract_export_apply(tmp_path, capsys) -> None:
    assert main(["steer", "extract", "--tiny", "llama", "--contrast", "sentiment", "--max-per-side", "6",
                 "--out", str(tmp_path / "ext"), "--quiet"]) == 0  # fmt: skip
    vec = tmp_path / "ext" / "vector.safetensors"
    v = SteeringVector.load(vec)
    assert v.layers == [0, 1, 2] and (tmp_path / "ext" / "separability.png").exists()
    out = tmp_path / "gguf"
    # RELIABILITY E22: layer 0 is never dropped silently: the default export refuses and says what to pass
    assert main(["steer", "export", "--vector", str(vec), "--strength", "2", "--out", str(out)]) == 2
    assert "layer 0" in capsys.readouterr().err and not (out / "control_vector.gguf").exists()
    assert main(["steer", "export", "--vector", str(vec), "--layers", "1", "2", "--strength", "2", "--out", str(out)]) == 0
    names = sorted(t.name for t in gguf.GGUFReader(str(out / "control_vector.gguf")).tensors)
    assert names == ["direction.1", "direction.2"]
    assert main(["steer", "apply", "--tiny", "llama", "--vector", str(out / "control_vector.gguf"), "--layers", "1",
                 "--prompt", "hello", "--max-new-tokens", "3", "--no-chat", "--out", str(tmp_path / "apply")]) == 0  # fmt: skip
    assert "steered (layers [1]" in capsys.readouterr().out
    assert main(["steer", "export", "--vector", str(vec), "--layers", "0", "--out", str(tmp_path / "bad")]) == 2
    assert main(["steer", "export", "--tiny", "llama", "--vector", str(vec), "--layers", "1", "--out", str(tmp_path / "b")]) == 2

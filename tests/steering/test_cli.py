"""`lmscope steer` and `lmscope introspect` end to end on a tiny model."""

from __future__ import annotations

import gguf

from lmscope.cli.main import main
from lmscope.steering import SteeringVector


def test_steer_extract_export_apply(tmp_path, capsys) -> None:
    vec = tmp_path / "v.safetensors"
    assert main(["steer", "extract", "--tiny", "llama", "--contrast", "sentiment", "--max-per-side", "6",
                 "--out", str(vec), "--report", str(tmp_path / "rep")]) == 0  # fmt: skip
    v = SteeringVector.load(vec)
    assert v.layers == [0, 1, 2] and (tmp_path / "rep" / "separability.png").exists()
    out = tmp_path / "v.gguf"
    # RELIABILITY E22: layer 0 is never dropped silently: the default export refuses and says what to pass
    assert main(["steer", "export", "--vector", str(vec), "--scale", "2", "--out", str(out)]) == 2
    assert "layer 0" in capsys.readouterr().err and not out.exists()
    assert main(["steer", "export", "--vector", str(vec), "--layers", "1", "2", "--scale", "2", "--out", str(out)]) == 0
    names = sorted(t.name for t in gguf.GGUFReader(str(out)).tensors)
    assert names == ["direction.1", "direction.2"]
    assert main(["steer", "apply", "--tiny", "llama", "--vector", str(out), "--layer", "1", "--prompt", "hello",
                 "--max-new-tokens", "3", "--no-chat"]) == 0  # fmt: skip
    assert "steered (layers [1]" in capsys.readouterr().out
    assert main(["steer", "export", "--vector", str(vec), "--layers", "0", "--out", str(tmp_path / "bad.gguf")]) == 2

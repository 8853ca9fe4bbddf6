"""SteeringVector arithmetic, D17 properties, safetensors and llama.cpp GGUF round trips (E20, E22)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmscope.core import edits
from lmscope.core.hooks import capture, intervene
from lmscope.core.sites import Site
from lmscope.steering import SteeringVector, steer


def _vec(d: int = 8, layers=(1, 2), seed: int = 0) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: torch.randn(d, generator=g) for layer in layers}, d)


def test_arithmetic_layerwise() -> None:
    a, b = _vec(layers=(1, 2)), _vec(layers=(2, 3), seed=1)
    s = a + b
    assert s.layers == [1, 2, 3]
    assert torch.equal(s[1], a[1]) and torch.equal(s[3], b[3]) and torch.allclose(s[2], a[2] + b[2])
    assert torch.allclose((a - a)[1], torch.zeros(8))
    assert torch.allclose((3 * a)[2], a[2] * 3) and torch.allclose((a * 0.5)[1], a[1] / 2)
    n = a.normalize()
    assert all(abs(v - 1) < 1e-6 for v in n.norms().values())
    with pytest.raises(ValueError, match="width"):
        a + _vec(d=4)
    with pytest.raises(ValueError, match="shape"):
        SteeringVector({1: torch.ones(3)}, 4)
    with pytest.raises(ValueError, match="NaN"):
        SteeringVector({1: torch.tensor([1.0, float("nan")])}, 2)
    with pytest.raises(KeyError, match="layers"):
        a[7]


def test_safetensors_round_trip_bitwise(tmp_path) -> None:
    v = _vec()
    v.meta["contrast"] = "x"
    v.save(tmp_path / "v.safetensors")
    w = SteeringVector.load(tmp_path / "v.safetensors")
    assert w.layers == v.layers and all(torch.equal(w[layer], v[layer]) for layer in v.layers)
    assert w.meta["contrast"] == "x" and w.d_model == 8


def test_gguf_layout_read_by_gguf_package(tmp_path) -> None:
    v = _vec(d=16, layers=(1, 5))
    path = v.to_gguf(tmp_path / "cv.gguf", model_hint="llama", scale=2.0)
    r = gguf.GGUFReader(str(path))
    f = r.get_field("general.architecture")
    assert bytes(f.parts[f.data[0]]).decode() == "controlvector"
    hint = r.get_field("controlvector.model_hint")
    assert bytes(hint.parts[hint.data[0]]).decode() == "llama"
    count = r.get_field("controlvector.layer_count")
    assert int(count.parts[count.data[0]][0]) == 2
    names = {t.name: t for t in r.tensors}
    assert set(names) == {"direction.1", "direction.5"}
    for layer in (1, 5):
        t = names[f"direction.{layer}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and len(t.shape) == 1 and int(t.shape[0]) == 16
        assert np.array_equal(np.array(t.data), (v[layer] * 2.0).numpy())
    back = SteeringVector.from_gguf(path, d_model=16)
    assert all(torch.equal(back[layer], v[layer] * 2.0) for layer in (1, 5))


def test_gguf_rules_mirror_llama_cpp(tmp_path) -> None:
    with pytest.raises(ValueError, match="direction.0"):
        _vec(layers=(0, 1)).to_gguf(tmp_path / "bad.gguf", model_hint="llama")
    ok = _vec(d=8).to_gguf(tmp_path / "ok.gguf", model_hint="llama")
    with pytest.raises(ValueError, match="width 8 but the model's d_model is 4"):
        SteeringVector.from_gguf(ok, d_model=4)

    def write(name: str, arr: np.ndarray, tensor: str = "direction.1", arch: str = "controlvector"):
        w = gguf.GGUFWriter(str(tmp_path / name), arch)
        w.add_tensor(tensor, arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return tmp_path / name

    with pytest.raises(ValueError, match="F32"):
        SteeringVector.from_gguf(write("f16.gguf", np.ones(8, dtype=np.float16)))
    with pytest.raises(ValueError, match="dimensions"):
        SteeringVector.from_gguf(write("2d.gguf", np.ones((2, 8), dtype=np.float32)))
    with pytest.raises(ValueError, match="invalid direction layer"):
        SteeringVector.from_gguf(write("zero.gguf", np.ones(8, dtype=np.float32), tensor="direction.0"))
    with pytest.raises(ValueError, match="not 'controlvector'"):
        SteeringVector.from_gguf(write("arch.gguf", np.ones(8, dtype=np.float32), arch="llama"))


@pytest.mark.parametrize("layer", [1, 2])
def test_gguf_direction_i_is_hf_layer_i_output(tiny_llama, tmp_path, layer: int) -> None:
    """An exported-then-imported vector for layer i changes layer i's output by exactly v, and no earlier layer."""
    m = tiny_llama
    d = m.shape.d_model
    v = SteeringVector({layer: torch.randn(d, generator=torch.Generator().manual_seed(layer))}, d)
    back = SteeringVector.from_gguf(v.to_gguf(tmp_path / "cv.gguf", model_hint="llama"), d_model=d)
    sites = [Site("resid_post", i) for i in range(m.shape.n_layers)]
    batch = m.tokenize(["hello world", "the quick brown fox"])
    with capture(m, sites) as clean:
        m(batch)
    with steer(m, back), capture(m, sites) as steered:
        out = m.hf(**batch.model_inputs(), output_hidden_states=True)
    for i in range(layer):
        assert torch.equal(clean[sites[i]], steered[sites[i]])
    assert torch.allclose(steered[sites[layer]], clean[sites[layer]] + v[layer], atol=1e-6)
    if layer < m.shape.n_layers - 1:
        assert torch.equal(out.hidden_states[layer + 1], steered[sites[layer]])


@settings(max_examples=15, deadline=None)
@given(a=st.floats(-4, 4), b=st.floats(-4, 4), seed=st.integers(0, 1000))
def test_d17_properties(tiny_llama, a: float, b: float, seed: int) -> None:
    m = tiny_llama
    d = m.shape.d_model
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    vec = SteeringVector({1: v}, d)
    batch = m.tokenize(["hello world"])
    clean = m(batch)
    with steer(m, vec, scale=0.0):
        assert torch.equal(m(batch), clean)  # scale 0 is bitwise the identity
    site = Site("resid_post", 1)
    with intervene(m, {site: [edits.add(v, a), edits.add(v, b)]}), capture(m, [site]) as two:
        m(batch)
    with steer(m, vec, scale=a + b), capture(m, [site]) as one:
        m(batch)
    assert torch.allclose(two[site], one[site], atol=1e-6 * (1 + abs(a) + abs(b)), rtol=0)
    x = torch.randn(3, 4, d, generator=torch.Generator().manual_seed(seed + 1))
    po = edits.project_out(v)
    pos = torch.arange(4)
    once = po(x, pos, 4)
    assert torch.allclose(po(once, pos, 4), once, atol=1e-6)

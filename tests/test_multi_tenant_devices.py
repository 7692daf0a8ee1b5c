"""GPU settings and the benchmarking-only random-init model: the provider's device is a checked setting
(CPU by default), and `random-init:SIZE` builds a Llama-architecture model of a known parameter count
that runs the Llamdex pass like the real base LLM. Everything here runs on CPU."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from protocol.errors import CodedError
from protocol.seeding import generator, init_parameters
from provider_party.model.base_llm import RANDOM_INIT_SHAPES, load_base_llm, random_init_config, random_init_llm, resolve_device


@pytest.fixture(scope="module")
def tiny_random_base():
    return load_base_llm("random-init:tiny")


# --- device setting ------------------------------------------------------------------------------------

def test_cpu_is_accepted_and_unknown_device_names_are_refused_with_the_choices():
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "CUDA", "mps", "cpu:0 "):
        with pytest.raises(CodedError) as e:
            resolve_device(bad)
        assert e.value.code == "BAD_DEVICE" and "cpu, cuda, cuda:N" in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_is_refused_where_this_machine_has_none():
    for name in ("cuda", "cuda:0"):
        with pytest.raises(CodedError) as e:
            resolve_device(name)
        assert "torch.cuda.is_available() is False" in str(e.value) and 'device = "cpu"' in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_index_beyond_the_machines_devices_is_refused():
    with pytest.raises(CodedError) as e:
        resolve_device(f"cuda:{torch.cuda.device_count()}")
    assert "pick one of them" in str(e.value)


def test_the_provider_config_reads_and_checks_its_device(tmp_path):
    from provider_party.service.config import ConfigError, load_provider_config

    path = tmp_path / "provider.toml"
    path.write_text('[provider]\nid = "p"\n')
    assert load_provider_config(path).device == "cpu"          # the default
    path.write_text('[provider]\ndevice = "cpu"\n')
    assert load_provider_config(path).device == "cpu"
    path.write_text('[provider]\ndevice = "tpu"\n')
    with pytest.raises(ConfigError) as e:
        load_provider_config(path)
    assert e.value.code == "BAD_CONFIG" and "[provider] device" in str(e.value) and "cpu, cuda, cuda:N" in str(e.value)
    path.write_text('[provider]\ndevice = 0\n')
    with pytest.raises(ConfigError, match="must be a string"):
        load_provider_config(path)


def test_the_batching_limits_are_checked_where_the_config_is_read():
    from provider_party.service.config import ConfigError, ProviderLimits

    lim = ProviderLimits.from_dict({"batch_max_wait_ms": 0, "batch_max_rows": 16, "batch_max_queued_rows": 256, "ask_deadline_s": 30})
    b = lim.batching()
    assert (b.max_wait_ms, b.max_batch_rows, b.max_queued_rows, b.deadline_s) == (0.0, 16, 256, 30.0)
    for bad, words in [({"batch_max_wait_ms": -1}, "non-negative"), ({"batch_max_rows": 2.5}, "whole number"),
                       ({"batch_max_rows": 0}, "positive"), ({"ask_deadline_s": 0}, "positive"),
                       ({"max_resident_experts": 0}, "positive"),
                       ({"batch_max_queued_rows": 100, "max_batch_questions": 64}, "2 × max_batch_questions")]:
        with pytest.raises(ConfigError) as e:
            ProviderLimits.from_dict(bad)
        assert words in str(e.value), (bad, str(e.value))


# --- random-init model ---------------------------------------------------------------------------------

def test_the_1b_random_init_model_has_llama_3_2_1b_layer_shapes_and_about_a_billion_parameters():
    from transformers import AutoModelForCausalLM

    config = random_init_config("1B")
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.num_attention_heads,
            config.num_key_value_heads) == (2048, 16, 8192, 32, 8)
    with torch.device("meta"):                                  # shapes only: no 4 GB allocation in the test
        model = AutoModelForCausalLM.from_config(config)
    count = sum(p.numel() for p in model.parameters())
    assert count == RANDOM_INIT_SHAPES["1B"].parameter_count(config.vocab_size)
    assert 1.0e9 <= count <= 1.1e9


def test_a_random_init_model_builds_with_the_expected_parameter_count_and_is_labelled(tiny_random_base):
    b = tiny_random_base
    assert b.model_id == "random-init-tiny@seed0"                # keys its connectors apart from any real model
    assert sum(p.numel() for p in b.model.parameters()) == RANDOM_INIT_SHAPES["tiny"].parameter_count(b.model.config.vocab_size)
    assert b.model.lm_head.weight.data_ptr() == b.model.model.embed_tokens.weight.data_ptr()   # tied, as in Llama-3.2-1B
    assert not any(p.requires_grad for p in b.model.parameters()) and not b.model.training
    assert all(torch.isfinite(p).all() for p in b.model.parameters())


def test_random_init_weights_come_from_the_seed_alone(tiny_random_base):
    torch.manual_seed(12345)                                    # the global state must not matter
    again = random_init_llm("tiny", seed=0)
    other = random_init_llm("tiny", seed=1)
    w = lambda b: b.model.model.layers[0].mlp.up_proj.weight   # noqa: E731
    assert torch.equal(w(again), w(tiny_random_base)) and not torch.equal(w(other), w(tiny_random_base))


def test_an_unknown_random_init_size_is_refused_with_the_sizes():
    with pytest.raises(CodedError) as e:
        load_base_llm("random-init:7B")
    assert e.value.code == "BAD_MODEL" and "'1B'" in str(e.value)


def test_the_random_init_model_serves_a_mixed_llamdex_pass(tiny_random_base, titanic_schema, default_schema):
    """The layer runner and the mixed pass work on the random-init architecture (answers are meaningless; shapes are not)."""
    from protocol.encoding import FeatureEncoder
    from protocol.expert_spec import ExpertSpec, build_expert
    from provider_party.model.connectors import ConnectorConfig, build_connectors
    from provider_party.model.llamdex_model import LlamdexModel, TenantQuery, answer_mixed

    base, models = tiny_random_base, []
    for i, schema in enumerate((titanic_schema, default_schema)):
        cfg = ConnectorConfig(base.model_id, schema.digest, base.hidden_size, base.num_layers, encoder_layer=1, inject_layer=2 + i)
        enc, dec = build_connectors(cfg, schema)
        models.append(LlamdexModel(base, schema, cfg, init_parameters(enc, generator(i)), init_parameters(dec, generator(10 + i))))
    rows = []
    for i, m in enumerate(models):
        spec = ExpertSpec(input_dim=FeatureEncoder(m.schema).dim, num_classes=m.schema.label.num_classes, schema_digest=m.schema.digest)
        expert = init_parameters(build_expert(spec), generator(20 + i)).eval()
        rows += [TenantQuery(f"Question {j} about a record of {m.schema.name}?", m, expert) for j in range(2)]
    mixed = answer_mixed(rows)
    for r, a in zip(rows, mixed):
        assert a.probs.shape == (r.model.schema.label.num_classes,) and torch.isfinite(a.probs).all()
        torch.testing.assert_close(a.probs, answer_mixed([r])[0].probs, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="trained for"):         # connectors of one base never serve another
        LlamdexModel(base, titanic_schema, replace(models[0].config, hidden_size=576), models[0].encoder, models[0].decoder)

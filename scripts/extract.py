"""Rules extract / extract_shard / extract_tokens: activations of one model (pooled hooks in one pass)."""

from mechflow.extract import ExtractSettings, extract_hooks_to_files, extract_tokens_to_file, shard_slice
from mechflow.io import digest, load_dataset, provenance_attrs
from mechflow.models import load_model, model_digest, resolve_model
from mechflow.workflow import run_rule


def main(sm) -> None:
    p = dict(sm.params.extract)
    prompts = load_dataset(sm.input.prompts)
    if sm.params.shard is not None:
        shard, n_shards = sm.params.shard
        prompts = prompts.isel(prompt=shard_slice(prompts.sizes["prompt"], shard, n_shards))
    resolved = resolve_model(p["model"]["spec"])
    m = p["model"]
    model, tokenizer = load_model(resolved, device=m["device"], dtype=m["dtype"], random_init=m["random_init"],
                                  init_seed=m["init_seed"])
    attrs = provenance_attrs(
        digest(p),
        dataset=sm.wildcards.dataset,
        model=sm.wildcards.model,
        model_spec=p["model"]["spec"],
        model_class=type(model).__name__,
        model_digest=model_digest(resolved),
        random_init=m["random_init"],
        init_seed=m["init_seed"],
        dtype=p["model"]["dtype"],
        max_length=p["max_length"],
        prompts_config_digest=prompts.attrs.get("config_digest", ""),
    )
    if sm.params.shard is not None:
        attrs["shard"] = f"{sm.params.shard[0]}/{sm.params.shard[1]}"
    settings = ExtractSettings.from_params(p)
    if getattr(sm.params, "tokens", False):
        extract_tokens_to_file(sm.output[0], model, tokenizer, prompts, settings, attrs)
    else:  # every pooled hook in one pass; the rule names each output after its hook
        extract_hooks_to_files({hook: sm.output[hook] for hook in settings.hooks}, model, tokenizer, prompts, settings,
                               attrs)


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)

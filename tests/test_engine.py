"""The generation engine on the real tiny model: same replies as decoding alone, prefixes computed once, no row
waits for another (integration)."""

import time

import pytest

from genpi.serving.engine import Engine, PrefixStore, Request, common_prefix

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smol(smol_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_path)
    model = AutoModelForCausalLM.from_pretrained(smol_path, dtype=torch.float32).eval()
    return model, tok


def _ids(tok, messages):
    return tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]


def _alone(model, tok, ids, n):
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids):].tolist()
    return out[: out.index(tok.eos_token_id)] if tok.eos_token_id in out else out


SYSTEM = ("You are a terse assistant for a hardware store. Answer in one short sentence, name the aisle when you can, "
          "and never invent prices. Aisles: 1 paint, 2 tools, 3 garden, 4 plumbing, 5 electrical, 6 timber.")
QUESTIONS = ["Where are the hammers?", "Do you sell garden hoses?", "I need a light switch.", "Where is the paint?",
             "Can I buy planks here?"]


def test_greedy_replies_equal_decoding_each_request_alone_and_the_shared_prompt_is_computed_once(smol):
    model, tok = smol
    engine = Engine(model, {tok.eos_token_id}, tok.pad_token_id, rows=4, min_prefix=16)
    requests = [Request(_ids(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]), 24)
                for q in QUESTIONS]  # five requests on four rows: one waits for a free row
    out = engine.generate(requests)
    for r, c in zip(requests, out):
        assert c.ids == _alone(model, tok, r.ids, 24)[: len(c.ids)]
        assert c.finish_reason in ("stop", "length") and (c.finish_reason == "length") == (len(c.ids) == 24)
    shared = common_prefix(requests[0].ids, requests[1].ids)
    assert shared > 16 and all(c.cached_tokens >= shared - 1 for c in out[1:])
    # the shared prompt was computed once, not once per request
    assert engine.stats.prefill_tokens < sum(len(r.ids) for r in requests) - 3 * shared


def test_shared_prefix_attention_gives_the_same_logits_as_plain_attention(smol):
    import torch

    from genpi.serving.engine import shared_prefix_attention
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    model, _ = smol
    module = model.model.layers[0].self_attn
    torch.manual_seed(0)
    n, width, shared = 5, 40, 24
    query = torch.randn(n, 9, 1, 64)
    key, value = torch.randn(n, 3, width, 64), torch.randn(n, 3, width, 64)
    key[:, :, :shared], value[:, :, :shared] = key[0, :, :shared], value[0, :, :shared]  # rows share a prefix
    lengths = torch.tensor([30, 33, 40, 26, 35])
    mask = (torch.arange(width)[None, :] < lengths[:, None])[:, None, None, :]
    plain, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.125)
    groups = [(torch.tensor([0, 2, 3]), shared), (torch.tensor([1, 4]), 10)]  # row 1 and 4 share less; all rows covered
    ours, _ = shared_prefix_attention(module, query, key, value, mask, scaling=0.125, genpi_groups=groups)
    assert torch.allclose(ours, plain, atol=1e-5)
    partial, _ = shared_prefix_attention(module, query, key, value, mask, scaling=0.125, genpi_groups=groups[:1])
    assert torch.allclose(partial, plain, atol=1e-5)  # rows in no group take plain attention


def test_a_prefix_extended_from_a_stored_one_equals_computing_it_whole(smol):
    model, tok = smol
    engine = Engine(model, {tok.eos_token_id}, tok.pad_token_id, rows=2, min_prefix=8)
    ids = _ids(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}])
    short = engine._compute_prefix("", ids[:20])
    longer = engine._compute_prefix("", ids[:50])  # starts from the stored 20 tokens
    whole = Engine(model, {tok.eos_token_id}, tok.pad_token_id)._compute_prefix("", ids[:50])
    for a, b in zip(longer.keys + longer.values, whole.keys + whole.values):
        assert (a - b).abs().max() < 1e-4
    assert short.ids == tuple(ids[:20])


def test_a_dialogue_turn_reuses_the_previous_turn_and_its_reply(smol):
    model, tok = smol
    engine = Engine(model, {tok.eos_token_id}, tok.pad_token_id, rows=2, min_prefix=16)
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]
    reply = engine.generate([Request(_ids(tok, first), 20)])[0]
    second = first + [{"role": "assistant", "content": tok.decode(reply.ids)},
                      {"role": "user", "content": "And the nails?"}]
    ids = _ids(tok, second)
    c = engine.generate([Request(ids, 20)])[0]
    assert c.cached_tokens > len(_ids(tok, first))  # the first turn's prompt and reply came from the store
    assert c.ids == _alone(model, tok, ids, 20)[: len(c.ids)]


def test_sampling_is_seeded_per_request(smol):
    model, tok = smol
    engine = Engine(model, {tok.eos_token_id}, tok.pad_token_id, rows=4)
    ids = _ids(tok, [{"role": "user", "content": "Write a short line about the sea."}])
    a = engine.generate([Request(ids, 16, temperature=1.0, top_p=0.9, seed=7), Request(ids, 16, temperature=1.0, seed=8)])
    b = engine.generate([Request(ids, 16, temperature=1.0, top_p=0.9, seed=7)])
    assert a[0].ids == b[0].ids
    assert a[0].ids != a[1].ids


def test_a_long_reply_does_not_hold_back_short_ones(smol):
    model, tok = smol
    engine = Engine(model, {tok.eos_token_id}, tok.pad_token_id, rows=4)
    long = engine.submit(Request(_ids(tok, [{"role": "user", "content": "Count from one to two hundred."}]), 160))
    time.sleep(0.5)  # the long one is decoding
    short = [engine.submit(Request(_ids(tok, [{"role": "user", "content": q}]), 4)) for q in QUESTIONS[:3]]
    for f in short:
        f.result(timeout=120)
    assert not long.done(), "the short requests joined the running batch and finished first"
    assert len(long.result(timeout=300).ids) == 160


def test_a_stop_string_ends_the_reply(smol):
    model, tok = smol
    engine = Engine(model, {tok.eos_token_id}, tok.pad_token_id, rows=2,
                    decode=lambda ids: tok.decode(ids, skip_special_tokens=True))
    ids = _ids(tok, [{"role": "user", "content": "List the numbers 1 to 10, separated by commas."}])
    free = tok.decode(engine.generate([Request(ids, 60)])[0].ids)
    word = free.split(",")[2].strip()  # a word the free reply writes early on
    c = engine.generate([Request(ids, 60, stop=(word,))])[0]
    text = tok.decode(c.ids)
    assert c.finish_reason == "stop" and word in text and len(c.ids) < len(tok(free)["input_ids"])
    with pytest.raises(ValueError, match="stop strings need"):
        Engine(model, {tok.eos_token_id}, tok.pad_token_id).submit(Request(ids, 4, stop=("x",))).result(timeout=10)


def test_bad_requests_fail_alone(smol):
    model, tok = smol
    engine = Engine(model, {tok.eos_token_id}, tok.pad_token_id, rows=2, max_context=64)
    with pytest.raises(ValueError, match="more than the 64 positions"):
        engine.submit(Request(list(range(100, 200)), 4)).result(timeout=10)
    assert len(engine.generate([Request(_ids(tok, [{"role": "user", "content": "hi"}]), 3)])[0].ids) <= 3


def test_prefix_store_keeps_the_longest_match_and_drops_the_least_recently_used():
    from genpi.serving.engine import _Entry

    store = PrefixStore(max_bytes=250)
    for ids in ((1, 2, 3), (1, 2, 3, 4, 5), (7, 8)):
        store.put("", _Entry(ids, [], [], 100))
    assert len(store.entries) == 2 and ("", (1, 2, 3)) not in store.entries  # the oldest went first
    entry, n = store.best("", [1, 2, 3, 4, 9], limit=5)
    assert entry.ids == (1, 2, 3, 4, 5) and n == 4
    assert store.best("other", [1, 2, 3], limit=3) == (None, 0)  # prefixes are per model variant


def test_a_cancelled_request_leaves_its_row_at_once_and_the_others_go_on(smol):
    model, tok = smol
    engine = Engine(model, {tok.eos_token_id}, tok.pad_token_id, rows=4)
    ids = _ids(tok, [{"role": "user", "content": "Count from one to two hundred."}])
    seen = []
    doomed = engine.submit(Request(ids, 400, on_token=lambda token, logprob: seen.append(token)))
    other = engine.submit(Request(_ids(tok, [{"role": "user", "content": QUESTIONS[0]}]), 30))
    while len(seen) < 3:  # decoding
        time.sleep(0.05)
    assert doomed.cancel()
    assert len(other.result(timeout=120).ids) >= 1
    deadline = time.monotonic() + 10
    while engine.load() != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.load() == (0, 0) and engine.stats.cancelled == 1
    assert len(seen) < 100  # it stopped decoding long before its 400 tokens
    queued = engine.submit(Request(ids, 4))  # cancelled while waiting: never admitted
    queued.cancel()
    assert engine.generate([Request(ids, 2)])[0].ids


def test_tokens_stream_as_produced_with_their_log_probabilities(smol):
    import torch

    model, tok = smol
    engine = Engine(model, {tok.eos_token_id}, tok.pad_token_id, rows=2)
    ids = _ids(tok, [{"role": "user", "content": QUESTIONS[1]}])
    streamed = []
    c = engine.generate([Request(ids, 8, logprobs=3, on_token=lambda t, lp: streamed.append((t, lp)))])[0]
    assert [t for t, _ in streamed] == c.ids and [lp for _, lp in streamed] == c.logprobs
    with torch.inference_mode():  # the raw model's distribution at each generated position, teacher-forced
        logits = model(torch.tensor([ids + c.ids])).logits[0, len(ids) - 1 : -1].float()
    expect = torch.log_softmax(logits, -1)
    for i, (token, lp) in enumerate(zip(c.ids, c.logprobs)):
        assert abs(lp.logprob - expect[i, token].item()) < 1e-3
        top = expect[i].topk(3)
        assert [t for t, _ in lp.top] == top.indices.tolist()
        assert all(abs(a - b) < 1e-3 for (_, a), b in zip(lp.top, top.values.tolist()))
    assert c.first_token_seconds >= c.queued_seconds >= 0
    assert engine.generate([Request(ids, 2)])[0].logprobs is None  # not asked for, not computed


def test_rows_of_different_adapters_batch_together_and_each_equals_its_merged_model(smol, tmp_path):
    """Per-row LoRA: one base, two adapters and the base itself in one batch; each row's greedy reply equals that
    of the adapter merged into its own model copy."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from eval_fixtures import make_adapter

    from genpi.models import load_adapter, load_model
    from genpi.serving.adapters import RowLoRA

    _, tok = smol
    dirs = {name: make_adapter(tmp_path / name, load_model("default"), seed=seed) for name, seed in (("a", 1), ("b", 2))}
    model = load_model("default").float().eval()
    lora = RowLoRA(model)
    for name, d in dirs.items():
        lora.add(name, d)
    engine = Engine(model, {tok.eos_token_id}, tok.pad_token_id, rows=6, min_prefix=16, lora=lora)
    prompts = [_ids(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]) for q in QUESTIONS[:2]]
    futures = {(v, i): engine.submit(Request(ids, 12), v) for v in ("a", "b", "") for i, ids in enumerate(prompts)}
    out = {k: f.result(timeout=300) for k, f in futures.items()}
    assert engine.stats.steps < 3 * 13  # the three variants decoded in the same steps, not one after another
    for name, d in dirs.items():
        merged = load_adapter(load_model("default"), d).merge_and_unload().float().eval()
        for i, ids in enumerate(prompts):
            assert out[(name, i)].ids == _alone(merged, tok, ids, 12)[: len(out[(name, i)].ids)]
        assert out[(name, 0)].ids != out[("", 0)].ids  # the adapter changes the reply
    for i, ids in enumerate(prompts):
        assert out[("", i)].ids == _alone(model, tok, ids, 12)[: len(out[("", i)].ids)]  # the base is untouched
    assert out[("a", 1)].cached_tokens > 16  # each adapter's prefix is cached for it


def test_mixed_rows_of_adapters_of_different_ranks_each_get_their_own_update(tmp_path):
    """Per-row LoRA with adapters of ranks 2 and 4, one of which skips a layer, and a row without an adapter:
    every row's output equals the base layer plus its own adapter's dense update."""
    import json

    import torch
    from safetensors.torch import save_file

    from genpi.serving.adapters import RowLoRA

    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(6, 5))
    model.add_module("down", torch.nn.Linear(5, 3))
    weights = {}
    for name, r, alpha, modules in (("a", 2, 4, ("up", "down")), ("b", 4, 4, ("up",))):
        d = tmp_path / name
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": alpha,
                                                          "target_modules": list(modules)}))
        tensors = {}
        for m in modules:
            layer = model.get_submodule(m)
            tensors[f"base_model.model.{m}.lora_A.weight"] = torch.randn(r, layer.in_features)
            tensors[f"base_model.model.{m}.lora_B.weight"] = torch.randn(layer.out_features, r)
        save_file(tensors, str(d / "adapter_model.safetensors"))
        weights[name] = (tensors, alpha / r)
    lora = RowLoRA(model)
    lora.add("a", tmp_path / "a")
    lora.add("b", tmp_path / "b")

    x = torch.randn(4, 3, 6)  # rows: a, b, none, a
    variants = ["a", "b", "", "a"]
    with torch.no_grad():
        with lora.rows(variants):
            got = model(x)
        for i, name in enumerate(variants):
            tensors, scale = weights.get(name, ({}, 0.0))

            def update(m, inp):
                a = tensors.get(f"base_model.model.{m}.lora_A.weight")
                return 0 if a is None else (inp @ a.T) @ tensors[f"base_model.model.{m}.lora_B.weight"].T * scale

            h = model.up(x[i]) + update("up", x[i])
            want = model.down(h) + update("down", h)
            assert torch.allclose(got[i], want, atol=1e-5), name
        with lora.rows(["b", "b"]):  # one adapter for every row
            both = model(x[:2])
        assert torch.allclose(both[1], got[1], atol=1e-5)
        assert torch.allclose(model(x), model.down(model.up(x)))  # outside the block: the base model


def test_lora_problems_names_what_vllm_would_refuse(tmp_path):
    import json

    from genpi.serving.adapters import lora_problems

    assert lora_problems(tmp_path) == [f"{tmp_path} must hold adapter_config.json and adapter_model.safetensors"]
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                              "target_modules": ["q_proj"], "use_dora": True}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    assert lora_problems(tmp_path) == ["use_dora is True: it must be false (vLLM does not support DoRA)"]


def test_genpi_export_output_follows_the_lora_format_vllm_loads(tmp_path):
    """The files `genpi export` writes for multi-LoRA serving, built with training's own LoRA settings, pass the
    format rules (names, shapes against the base, no bias/DoRA/modules_to_save) and give a valid vLLM rank."""
    import json

    from peft import LoraConfig, get_peft_model

    from genpi.config import TrainConfig
    from genpi.export import export
    from genpi.models import load_model, quiet_peft
    from genpi.serving.adapters import lora_problems, vllm_rank
    from genpi.training.run import _lora_targets

    c = TrainConfig(data=str(tmp_path), out=str(tmp_path / "unused"))
    model = load_model("default")
    with quiet_peft():
        peft_model = get_peft_model(model, LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                                                      target_modules=_lora_targets(c, model), task_type="CAUSAL_LM"))
    trained = tmp_path / "adapter"
    peft_model.save_pretrained(trained)
    base = peft_model.unload()
    (trained / "genpi.json").write_text(json.dumps({"strategy": "genpi", "base_model": "default"}))
    out = export(trained, tmp_path / "serve" / "agent")
    assert lora_problems(out, base) == []
    assert vllm_rank([out]) == 16 and json.loads((out / "adapter_config.json").read_text())["r"] == c.lora_r
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(config | {"bias": "all", "modules_to_save": ["lm_head"]}))
    assert lora_problems(out, base) == ["bias is 'all': it must be 'none'", "modules_to_save is ['lm_head']: it must be empty"]

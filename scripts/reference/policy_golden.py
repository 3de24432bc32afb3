"""Golden fixtures for rl-policy (crates/rl-policy/tests/fixtures/).

Writes
  smollm2_golden.json   SmolLM2-135M-Instruct (GGUF Q4_1, dequantized by transformers to f32):
                        per-token log-probs, a left-padded batch, greedy continuations,
                        tokenizer ids and rendered chat templates.
  tiny-{llama,qwen2,qwen3}/
                        random-init Hugging Face model dirs (config.json, model.safetensors, f32)
                        plus golden.json with the same `cases` / `batch` layout (random ids).

Conventions (the Rust side must use the same):
  token_logprobs[t] = log softmax(logits[t])[input_ids[t + 1]]          (length n - 1)
  batch: rows LEFT-padded with `pad_id`; position_ids = max(cumsum(mask) - 1, 0), so each row's
         log-probs equal the unpadded case's; token_logprobs[r][t] is 0.0 unless
         mask[r][t] == mask[r][t + 1] == 1.
  greedy_new_ids: 32 argmax tokens appended one by one after input_ids, no EOS stop.

Run: bash scripts/fetch_smollm2.sh && scripts/.venv/bin/python scripts/reference/policy_golden.py
"""
import copy
import json
import os
import sys

import torch
import transformers
from tokenizers import Regex, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

torch.set_num_threads(2)
torch.manual_seed(0)

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIXTURES = os.path.join(REPO, "crates", "rl-policy", "tests", "fixtures")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GREEDY_TOKENS = 32
SOURCE = "scripts/reference/policy_golden.py"


def token_logprobs(model, ids, mask=None):
    """log p(ids[:, t+1] | ids[:, :t+1]) for every t; [B, T-1] f32 (0.0 where masked)."""
    ids = torch.as_tensor(ids)
    if mask is None:
        mask = torch.ones_like(ids)
    mask = torch.as_tensor(mask)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
    lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    return torch.where(valid, lp, torch.zeros_like(lp))


def greedy(model, ids, n):
    """n argmax tokens after ids (full recompute each step, no EOS stop)."""
    seq = list(ids)
    out = []
    for _ in range(n):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
        nxt = int(torch.argmax(logits))
        out.append(nxt)
        seq.append(nxt)
    return out


def left_pad(rows, pad_id):
    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + list(r) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return ids, mask


def golden_cases(model, named_ids, greedy_names, pad_id):
    cases = []
    for name, text, ids in named_ids:
        lp = token_logprobs(model, [ids])[0].tolist()
        case = {"name": name}
        if text is not None:
            case["text"] = text
        case["input_ids"] = list(ids)
        case["token_logprobs"] = lp
        if name in greedy_names:
            case["greedy_new_ids"] = greedy(model, ids, GREEDY_TOKENS)
        cases.append(case)
    ids, mask = left_pad([c["input_ids"] for c in cases], pad_id)
    blp = token_logprobs(model, ids, mask).tolist()
    # Consistency: the padded batch reproduces the per-case values.
    worst = 0.0
    for row, c in zip(blp, cases):
        tail = row[len(row) - len(c["token_logprobs"]):]
        worst = max(worst, max(abs(a - b) for a, b in zip(tail, c["token_logprobs"])))
    batch = {"pad_id": pad_id, "input_ids": ids, "attention_mask": mask, "token_logprobs": blp}
    return cases, batch, worst


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def smollm2():
    model_dir = os.path.join(REPO, ".cache", "models")
    if not os.path.exists(os.path.join(model_dir, GGUF_NAME)):
        sys.exit("missing model: run bash scripts/fetch_smollm2.sh first")
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=GGUF_NAME, dtype=torch.float32)
    model.eval()

    chat_cases = [
        {
            "name": "one_user_message",
            "messages": [{"role": "user", "content": "What is 12+34?"}],
            "add_generation_prompt": True,
        },
        {
            "name": "system_user_assistant",
            "messages": [
                {"role": "system", "content": "You are a careful math tutor."},
                {"role": "user", "content": "Compute 7*8."},
                {"role": "assistant", "content": "7*8 = 56."},
                {"role": "user", "content": "And 9*9?"},
            ],
            "add_generation_prompt": True,
        },
        {
            "name": "no_generation_prompt",
            "messages": [{"role": "user", "content": "Hi!"}],
            "add_generation_prompt": False,
        },
    ]
    for c in chat_cases:
        c["rendered"] = tok.apply_chat_template(
            c["messages"], tokenize=False, add_generation_prompt=c["add_generation_prompt"]
        )
    chat_text = chat_cases[0]["rendered"]

    texts = [
        ("chat_12_34", chat_text),
        ("arithmetic", "Question: A farmer has 17 sheep and buys 25 more. How many sheep does he have?\nAnswer:"),
        ("unicode_emoji", "Héllo wörld — naïve café, 数学 ∑ x² ≤ π 🙂🚀👩‍💻!"),
    ]
    named = [(n, t, tok(t, add_special_tokens=False)["input_ids"]) for n, t in texts]
    cases, batch, worst = golden_cases(model, named, {"chat_12_34", "arithmetic"}, tok.pad_token_id)

    tok_texts = [
        "What is 12+34?",
        "  Hello,\tworld!\n\nThe answer is 42.   Trailing spaces   ",
        "3.14159 and 1000000 and -0.5e-10",
        "Héllo wörld — naïve café, Straße, Ελληνικά, русский, 数学, 한국어, العربية",
        "Emoji: 🙂🚀👩‍💻👍🏽 🇫🇷 ❤️",
        "def f(x):\n    return x ** 2  # square\n",
        chat_text,
        chat_cases[1]["rendered"],
        "<|im_start|>user\nno end token<|endoftext|>tail",
        "",
    ]
    # Whitespace before digits and non-ASCII numerals: here transformers' GGUF tokenizer (plain GPT-2
    # ByteLevel split) and llama.cpp's `pre = "smollm"` split (`\p{N}` first, llama-vocab.cpp
    # LLAMA_VOCAB_PRE_TYPE_SMOLLM; the same as SmolLM2's own tokenizer.json: Digits(individual) +
    # ByteLevel) disagree. The model was trained with the latter, so `ids` follow it, and
    # `transformers_gguf_ids` records transformers' ids where they differ.
    tok_texts += ["  99 bottles", "x ²³ and\n 7", "tab\t\t12"]
    faithful = copy.deepcopy(tok.backend_tokenizer)
    faithful.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tokenizer_cases = []
    for t in tok_texts:
        ids = faithful.encode(t, add_special_tokens=False).ids
        case = {"text": t, "ids": ids}
        hf_ids = tok(t, add_special_tokens=False)["input_ids"]
        if hf_ids != ids:
            case["transformers_gguf_ids"] = hf_ids
        tokenizer_cases.append(case)
        # Decoding (skip_special_tokens=False) must give the text back.
        assert tok.decode(ids, skip_special_tokens=False) == t, t
    for c in cases:
        assert faithful.encode(c["text"], add_special_tokens=False).ids == c["input_ids"], c["name"]

    # The other `tokenizer.ggml.pre` splits, applied to SmolLM2's vocabulary exactly the way
    # transformers' GGUF loader sets them (gguf_tokenizer_mapping.py `set_split_regex`):
    # Split(regex, isolated) + ByteLevel(use_regex=False). Checks the regexes, not a real Qwen vocab.
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre_tokenizer_cases = {}
    for pre in ["qwen2", "llama-bpe"]:
        split_tok = copy.deepcopy(tok.backend_tokenizer)
        split_tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        pre_tokenizer_cases[pre] = [
            {"text": t, "ids": split_tok.encode(t, add_special_tokens=False).ids} for t in tok_texts
        ]

    out = {
        "source": SOURCE,
        "model": GGUF_NAME + " (dequantized, f32)",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "conventions": "token_logprobs[t] = log p(input_ids[t+1] | input_ids[..=t]); batch rows left-padded "
        "with pad_id, position_ids = max(cumsum(mask)-1, 0), 0.0 unless mask[t] and mask[t+1]",
        "special_ids": {
            "bos": tok.bos_token_id,
            "eos": tok.eos_token_id,
            "pad": tok.pad_token_id,
            "unk": tok.unk_token_id,
        },
        "cases": cases,
        "batch": batch,
        "tokenizer_cases": tokenizer_cases,
        "pre_tokenizer_cases": pre_tokenizer_cases,
        "chat_template_cases": chat_cases,
    }
    path = os.path.join(FIXTURES, "smollm2_golden.json")
    write_json(path, out)
    print(f"smollm2: {len(cases)} cases, batch {len(batch['input_ids'])}x{len(batch['input_ids'][0])}, "
          f"max |batch - case| log-prob {worst:.2e}, {len(tokenizer_cases)} tokenizer cases -> {path}")
    for c in cases:
        if "greedy_new_ids" in c:
            print(f"  {c['name']}: greedy -> {tok.decode(c['greedy_new_ids'])!r}")
    print(f"  chat template: {chat_text!r}")
    differ = [c["text"] for c in tokenizer_cases if "transformers_gguf_ids" in c]
    print(f"  transformers' GGUF tokenizer differs from llama.cpp/upstream split on: {differ!r}")


def tiny(name, cls, config, seed, legacy_rope=False):
    torch.manual_seed(seed)
    model = cls(config).float().eval()
    # HF initialises norms to 1 and biases to 0: perturb them so that a mis-loaded norm or bias
    # (e.g. q_norm/k_norm swapped, q/k/v bias dropped) changes the log-probs.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.5 * torch.randn_like(p))
    d = os.path.join(FIXTURES, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    if legacy_rope:
        # Published Qwen2.5 / Llama configs carry a top-level `rope_theta` (transformers < 5 layout);
        # keep one fixture in that layout so loaders handle both.
        cpath = os.path.join(d, "config.json")
        with open(cpath) as f:
            cfg_json = json.load(f)
        cfg_json["rope_theta"] = cfg_json.pop("rope_parameters")["rope_theta"]
        write_json(cpath, cfg_json)
    # The files on disk must reproduce the in-memory model.
    reloaded = cls.from_pretrained(d, dtype=torch.float32).eval()
    probe = torch.arange(3, 20)[None]
    diff = (token_logprobs(model, probe) - token_logprobs(reloaded, probe)).abs().max().item()
    assert diff == 0.0, f"{name}: reloaded model differs by {diff}"
    model = reloaded
    gen = torch.Generator().manual_seed(seed + 1)
    lengths = [9, 14, 5]
    named = [
        (f"random_{i}", None, torch.randint(3, config.vocab_size, (n,), generator=gen).tolist())
        for i, n in enumerate(lengths)
    ]
    cases, batch, worst = golden_cases(model, named, {"random_0", "random_1"}, 0)
    cfg = model.config
    out = {
        "source": SOURCE,
        "model": f"{name}: {cls.__name__} random init (seed {seed}), f32",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "conventions": "token_logprobs[t] = log p(input_ids[t+1] | input_ids[..=t]); batch rows left-padded "
        "with pad_id, position_ids = max(cumsum(mask)-1, 0), 0.0 unless mask[t] and mask[t+1]",
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "cases": cases,
        "batch": batch,
    }
    write_json(os.path.join(d, "golden.json"), out)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    lps = [x for c in cases for x in c["token_logprobs"]]
    print(f"{name}: {size / 1024:.0f} KiB, log-probs in [{min(lps):.2f}, {max(lps):.2f}], "
          f"max |batch - case| {worst:.2e}, tied={out['tie_word_embeddings']}")


def tiny_models():
    common = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        # Larger than the default 0.02 so that log-probs are far from uniform (a sharper test).
        initializer_range=0.25,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    tiny(
        "tiny-llama",
        LlamaForCausalLM,
        LlamaConfig(**common, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        seed=11,
    )
    tiny(
        "tiny-qwen2",
        Qwen2ForCausalLM,
        Qwen2Config(**common, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        seed=22,
        legacy_rope=True,
    )
    tiny(
        "tiny-qwen3",
        Qwen3ForCausalLM,
        Qwen3Config(
            **common,
            head_dim=32,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        seed=33,
    )


def prompt_templates():
    """R1-Zero prompt templates, transcribed from their sources and rendered as they render them."""
    from jinja2 import Template

    # orz:playground/zero_setting_base.py L12-22 (two Jinja templates; Jinja drops the trailing newline).
    orz_prompt = (
        "{{bos_token}}A conversation between User and Assistant. The User asks a question, and the Assistant "
        "solves it. The Assistant first thinks about the reasoning process in the mind and then provides the User "
        "with the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
        "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
        "</answer>. User: {{prompt}}\nAssistant: <think>"
    )
    orz_instruction = (
        "You must put your answer inside <answer> </answer> tags, i.e., <answer> answer here </answer>. And your "
        "final answer will be extracted automatically by the \\boxed{} tag.\nThis is the problem:\n{{prompt}}\n"
    )

    def orz(q, bos):
        return Template(orz_prompt).render(bos_token=bos, prompt=Template(orz_instruction).render(prompt=q))

    # urz:train_zero_math.py L45-71.
    def r1(q):
        return (
            "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. The "
            "Assistant first thinks about the reasoning process in the mind and then provides the User with the "
            "answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
            "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer "
            "here </answer>.\nUser: " + q + "\nAssistant: <think>"
        )

    def qwen_math(q):
        return (
            "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
            "<|im_start|>user\n" + q + "<|im_end|>\n<|im_start|>assistant\n"
        )

    cases = []
    for q in ["What is 12+34?", "Let $x^2 = 4$.\nFind $x$ (in \\boxed{})."]:
        cases += [
            {"template": "open_reasoner_zero", "bos_token": "", "question": q, "prompt": orz(q, "")},
            {"template": "open_reasoner_zero", "bos_token": "<|endoftext|>", "question": q, "prompt": orz(q, "<|endoftext|>")},
            {"template": "r1", "bos_token": "", "question": q, "prompt": r1(q)},
            {"template": "qwen_math", "bos_token": "", "question": q, "prompt": qwen_math(q)},
            {"template": "none", "bos_token": "", "question": q, "prompt": q},
        ]
    path = os.path.join(FIXTURES, "prompt_templates.json")
    write_json(path, {"source": SOURCE, "cases": cases})
    print(f"prompt templates: {len(cases)} cases -> {path}")


# A Qwen-style chat template written for this test (not copied from a model): it uses the Jinja and
# Python features Qwen2.5 / Qwen3 templates rely on (namespace, loop.index0 / loop.first, negative
# indexing, str.split / lstrip / rstrip / strip / startswith / endswith / upper, `in`, tojson,
# raise_exception, `is defined` / `is false`), and block tags without `-` to exercise
# trim_blocks / lstrip_blocks, plus printed booleans and None (Python spelling).
PARITY_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
    {{- "# Tools\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- elif messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a test assistant.<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_user=-1) %}
{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
    {%- elif message.role not in ['user', 'assistant', 'system', 'tool'] %}
        {{- raise_exception('unknown role: ' + message.role) }}
    {%- elif message.role == 'assistant' %}
        {%- set content = message.content %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {{- '<|im_start|>assistant\\n' + content.strip() + '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {{- '<|im_start|>user\\n<tool_response>\\n' + message.content.rstrip() + '\\n</tool_response><|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{% for m in messages %}
  {% if m.role == "user" %}
[{{ loop.index0 }}/{{ ns.last_user }}] {{ m.content | upper }} {{ m.content.startswith("Hi") }} {{ m.content.endswith("?") }} {{ m.missing is defined }} {{ none }}
  {% endif %}
{% endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}
{%- endif %}
"""


def chat_template_parity():
    """Rendered by transformers' own chat-template renderer (transformers.utils.chat_template_utils)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    tool = {"type": "function", "function": {"name": "add", "description": "Add two numbers: a+b \"quoted\" é",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "number"}},
                           "required": ["a", "b"]}}}
    # rl-policy takes the context as serde_json values, whose maps iterate in sorted key order: give
    # the tool with its keys sorted so the parity is about rendering, not map order (documented).
    tool = json.loads(json.dumps(tool, sort_keys=True))
    chats = [
        {"name": "default_system", "messages": [{"role": "user", "content": "Hi there?"}],
         "add_generation_prompt": True, "extra": {}},
        {"name": "system_think_tool", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+3?"},
            {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n  5  "},
            {"role": "tool", "content": "{\"result\": 5}\n\n"},
            {"role": "user", "content": "Hi again"}],
         "add_generation_prompt": True, "extra": {"enable_thinking": False}},
        {"name": "tools", "messages": [{"role": "user", "content": "Add 1 and 2."}],
         "add_generation_prompt": False, "extra": {"tools": [tool]}},
        {"name": "bad_role", "messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}],
         "add_generation_prompt": False, "extra": {}},
    ]
    for c in chats:
        extra = dict(c["extra"])
        tools = extra.pop("tools", None)
        try:
            rendered, _ = render_jinja_template(
                conversations=[c["messages"]], tools=tools, chat_template=PARITY_TEMPLATE,
                add_generation_prompt=c["add_generation_prompt"], **extra)
            c["rendered"] = rendered[0]
        except Exception as e:  # raise_exception
            c["error"] = str(e)
    path = os.path.join(FIXTURES, "chat_template_parity.json")
    write_json(path, {"source": SOURCE, "template": PARITY_TEMPLATE, "cases": chats})
    print(f"chat template parity: {len(chats)} cases -> {path}")


if __name__ == "__main__":
    os.makedirs(FIXTURES, exist_ok=True)
    prompt_templates()
    chat_template_parity()
    tiny_models()
    smollm2()

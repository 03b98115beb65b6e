"""Chat templates in the styles real tokenizers ship, written here as Jinja (no download).

Each renders a generation prompt, as Hugging Face templates do, and HF's Jinja environment
(trim_blocks, lstrip_blocks) is what they are rendered with.
"""

# ChatML, as Qwen 2 / many fine-tunes ship it.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama 3 headers: a BOS first, each turn closed by <|eot_id|>, content stripped.
LLAMA3 = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

# A default system prompt when the chat brings none (as Qwen 2.5's template does).
SYSTEM_DEFAULT = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '[SYS] You are a helpful assistant. [/SYS]\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[SYS] ' + message['content'] + ' [/SYS]\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ '[TOOL] ' + message['content'] + ' [/TOOL]' }}"
    "{% endif %}"
    "{% endfor %}"
)

# Rewrites history: an earlier assistant turn loses its reasoning once later turns exist
# (as reasoning models' templates do), so no prefix of the chat renders as its start.
DROPS_PAST_REASONING = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' and not loop.last %}"
    "{{ '<|im_start|>assistant\n' + message['content'].split('</think>')[-1] + '<|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

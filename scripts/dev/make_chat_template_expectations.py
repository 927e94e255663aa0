#!/usr/bin/env python3
"""Writes src/generate/testdata/chat_template_expectations.json: chat templates rendered by
transformers (apply_chat_template for the shared models, render_jinja_template -- what
apply_chat_template calls -- for the templates below), the expectations kbit's interpreter must
meet byte for byte.

Run from the repository root:  python3 scripts/dev/make_chat_template_expectations.py
Needs transformers and jinja2; the shared models are read from $KBIT_SHARED_DIR (default ../shared).
The templates are written for kbit's tests: they copy the structure of popular Hub templates
(Llama 2/3, ChatML/Qwen, Mistral, Gemma, Zephyr, Phi-3) and exercise the Jinja constructs.
"""
import json
import os
import sys

import jinja2
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.environ.get("KBIT_SHARED_DIR", os.path.join(ROOT, "..", "shared"))
OUT = os.path.join(ROOT, "src", "generate", "testdata", "chat_template_expectations.json")
TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


def conv(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


CONVERSATIONS = {
    "system_user": conv(("system", "You are a helpful assistant."), ("user", "Hello!")),
    "user_only": conv(("user", "What is 2 + 2?")),
    "multi_turn": conv(("user", "Hi there"), ("assistant", "Hello! How can I help?"),
                       ("user", "Tell me a joke.")),
    "system_multi_turn": conv(("system", "  Be brief.  "), ("user", "Name a colour."),
                              ("assistant", "Blue."), ("user", "Another?")),
    "empty_content": conv(("user", ""), ("assistant", ""), ("user", "   ")),
    "unicode": conv(("user", "héllo wörld — 世界 🎉\tñ"), ("assistant", "Ça va? ΑΒΓ δ")),
    "braces": conv(("user", "{{ not a tag }} {% if x %} {# c #} '\"\\n"),
                   ("assistant", "}} %} #} {{- -}}")),
    "bad_alternation": conv(("user", "one"), ("user", "two")),
}
ALTERNATING = ["user_only", "multi_turn", "empty_content", "unicode", "braces", "bad_alternation"]
ALL = list(CONVERSATIONS)

# name -> (template, conversations, extra context)
TEMPLATES = {}


def template(name, source, conversations=None, extra=None):
    TEMPLATES[name] = (source, conversations or ALL, extra or {})


template("llama3", "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

template("llama3_1_system", """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
""")

template("chatml", "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

template("qwen2_5", """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {{- raise_exception('tools are not part of this test') }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
""")

template("qwen3_last_query", """{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == "assistant" %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {{- '<|im_start|>' + message.role + '\\n<think>\\n\\n</think>\\n\\n' + content.lstrip('\\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
""", extra={"enable_thinking": False})

template("mistral", "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}", ALL)

template("mistral_v3_system", """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
""")

template("gemma", "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

template("zephyr", "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")

template("phi3", "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

template("llama2", "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

template("loop_variables", """{% for m in messages %}
{{ loop.index }}/{{ loop.length }} i0={{ loop.index0 }} r={{ loop.revindex }} r0={{ loop.revindex0 }} first={{ loop.first }} last={{ loop.last }}
  prev={{ loop.previtem.role if loop.previtem is defined else '-' }} next={{ loop.nextitem['role'] if loop.nextitem is defined else '-' }} {{ loop.cycle('odd', 'even') }}
{% endfor %}
{% for m in messages if m.role == 'user' %}
{{ loop.index }}:{{ m.content }}|{{ loop.length }}
{% else %}
no user messages
{% endfor %}
{% for x in [] %}never{% else %}empty list{% endfor %}
""")

template("unpack_and_dicts", """{% set d = {'b': 2, 'a': 1, 'C': 3} %}
{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}
{% for k, v in d|dictsort %}{{ k }}={{ v }};{% endfor %}
{% for k, v in d|dictsort(reverse=true) %}{{ k }}={{ v }};{% endfor %}
{% for k in d %}{{ k }}{% endfor %} {{ d.keys()|list }} {{ d.values()|list }} {{ d.get('a') }} {{ d.get('zz', 'none!') }} {{ d.get('zz') }}
{% for pair in [(1, 'x'), (2, 'y')] %}{% set n, s = pair %}{{ n }}{{ s }}{% endfor %}
{% for (n, s) in [[3, 'z']] %}{{ n ~ s }}{% endfor %}
{{ d['a'] }} {{ d.b }} {{ d|length }} {{ d.items()|list }} {{ d }}
{% for m in messages %}{% for k, v in m|items %}{{ k }}:{{ v|length }} {% endfor %}{% endfor %}
""")

template("namespace_and_scoping", """{% set ns = namespace(count=0, names=[]) %}
{% set outer = 'outer' %}
{% for m in messages %}
{% set outer = 'inner' ~ loop.index %}
{% set ns.count = ns.count + 1 %}
{% set ns.names = ns.names + [m.role] %}
{{ outer }}
{% endfor %}
{{ outer }} {{ ns.count }} {{ ns.names|join(',') }}
{% set block %}
  captured {{ messages|length }} messages
{% endset %}
[{{ block }}]
{% set upper_block | upper %}shout {{ ns.count }}{% endset %}
{{ upper_block }}
{% set a, b = 1, 2 %}{{ a }}+{{ b }}={{ a + b }}
{% if true %}{% set in_if = 'visible' %}{% endif %}{{ in_if }}
{% with x = 5, y = 'w' %}{{ x }}{{ y }}{% endwith %}[{{ x }}]
""")

template("macros", """{% macro render(role, content, prefix='<', suffix='>') -%}
{{ prefix }}{{ role|upper }}{{ suffix }} {{ content }}
{%- endmacro %}
{% macro wrap(tag) %}[{{ tag }}]{{ caller() }}[/{{ tag }}]{% endmacro %}
{% macro pair(a, b) %}{{ a }}&{{ b }}{% endmacro %}
{% for m in messages %}
{{ render(m.role, m.content) }}
{{ render(m.role, m.content, suffix='/>') }}
{{ render(role=m.role, content='x', prefix='(', suffix=')') }}
{% endfor %}
{% call wrap('b') %}inside {{ messages|length }}{% endcall %}
{% call(item) wrap('list') %}{% endcall %}
{{ pair(1, b=2) }} {{ pair('x', 'y') }}
""")

template("filter_blocks_and_filters", """{% filter upper %}shouting {{ messages[0].content }}{% endfilter %}
{% filter replace('a', '@')|trim %}   banana bread   {% endfilter %}
{{ '  padded  '|trim }}|{{ 'xxhixx'|trim('x') }}|{{ messages|length }}|{{ messages|count }}|{{ 'héllo'|length }}
{{ 'hello WORLD'|upper }} {{ 'Hello WORLD'|lower }} {{ 'hello big-world (x)'|title }} {{ 'hELLO wORLD'|capitalize }}
{{ 'aaa'|replace('a', 'b') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ [1, 2, 3]|join }} {{ ['a', 'b']|join(', ') }} {{ messages|join('; ', attribute='role') }}
{{ [4, 5, 6]|first }} {{ [4, 5, 6]|last }} {{ 'abc'|first }} {{ 'abc'|list }} {{ 'abc'|last }}
{{ undefined_var|default('fallback') }} {{ ''|default('empty', true) }} {{ ''|d('e') }}| {{ none|default('x') }} {{ 0|default(7, boolean=true) }}
{{ 42|string ~ '!' }} {{ '17'|int + 1 }} {{ '3.5'|float }} {{ 'x'|int }} {{ 'x'|int(5) }} {{ 3.9|int }} {{ '0x1A'|int(0, 16) }} {{ -3|abs }} {{ -2.5|abs }}
{{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 7|round }} {{ 2.1|round(0, 'ceil') }} {{ 2.9|round(method='floor') }} {{ 1|float }}
{{ [3, 1, 2]|sort }} {{ [3, 1, 2]|sort(reverse=true) }} {{ ['b', 'A', 'c']|sort }} {{ ['b', 'A', 'c']|sort(case_sensitive=true) }} {{ [1, 2, 3]|reverse|list }} {{ 'abc'|reverse }}
{{ [1, 2, 2, 'a', 'A', 1]|unique|list }} {{ [1, 5, 3]|max }} {{ [1, 5, 3]|min }} {{ [1, 5, 3]|sum }}
{{ '<b>bold</b>  text <!-- c -->here'|striptags }} {{ 'a<b>'|safe }} {{ '<a href="x">'|e }}
{{ 'line1\\nline2\\n\\nline4'|indent }}
{{ 'line1\\nline2'|indent(2, true) }}
{{ 'line1\\n\\nline3'|indent(width='> ', blank=true) }}
[{{ 'mid'|center(9) }}] [{{ 'mid'|center(10) }}] {{ 'one two, three_four 5'|wordcount }}
""")

template("tojson", """{{ messages|tojson }}
{{ messages[0]|tojson(indent=2) }}
{{ data|tojson }}
{{ data|tojson(indent=4) }}
{{ data|tojson(sort_keys=true) }}
{{ 'quote " backslash \\\\ tab \\t nl \\n ctrl \\x01 uni é 世'|tojson }}
{{ [1.0, 2.5, 1e20, -0.0, 100, true, none, []]|tojson }} {{ {}|tojson }} {{ {}|tojson(indent=2) }} {{ []|tojson(indent=2) }}
""", extra={"data": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Zürich"]}}, "required": ["city"]}, "nested": [[], {}, [1, [2, {"z": None}]]], "ratio": 0.1, "big": 12345678901234}})

template("selection_filters", """{% set people = [{'name': 'ann', 'age': 31, 'tags': ['x']}, {'name': 'bob', 'age': 17}, {'name': 'Cid', 'age': 45, 'admin': true}] %}
{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|list }}
{{ messages|rejectattr('role', 'equalto', 'user')|map(attribute='role')|list }}
{{ people|selectattr('admin')|map(attribute='name')|join }} {{ people|rejectattr('admin')|map(attribute='name')|join(',') }}
{{ people|selectattr('age', 'gt', 20)|map(attribute='name')|list }} {{ people|selectattr('age', '>=', 31)|list|length }}
{{ people|selectattr('tags', 'defined')|map(attribute='name')|first }} {{ people|map(attribute='tags.0', default='none')|list }}
{{ people|sort(attribute='age', reverse=true)|map(attribute='name')|join(' ') }} {{ people|map(attribute='name')|map('upper')|join }}
{{ [1, 2, 3, 4, 5, 6]|select('even')|list }} {{ [1, 2, 3, 4]|reject('odd')|list }} {{ [0, 1, '', 'a', none]|select|list }}
{{ people|unique(attribute='age')|list|length }} {{ ['a', 'A', 'b']|unique(case_sensitive=true)|list }}
{{ [3, 2, 1]|map('string')|join('-') }} {{ ['1', '2']|map('int')|sum }}
""")

template("slicing", """{{ messages[::-1]|map(attribute='role')|join(',') }}
{{ messages[1:]|length }} {{ messages[-1].role }} {{ messages[:1]|map(attribute='role')|list }} {{ messages[-2:]|length }}
{% set s = 'héllo wörld' %}{{ s[1:4] }} {{ s[::-1] }} {{ s[::2] }} {{ s[-3:] }} {{ s[0] }} {{ s[-1] }} {{ s[100:] }}|
{% set l = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] %}{{ l[2:8:2] }} {{ l[8:2:-2] }} {{ l[-3:-1] }} {{ l[:-7] }} {{ l[::3] }} {{ l[5:1] }} {{ l[-100:2] }} {{ l[1::-1] }}
{{ (1, 2, 3)[1:] }} {{ l[20] is defined }} {{ l[-1] }} {{ l.3 }}
""")

template("expressions", """{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 2 ** 3 ** 2 }} {{ 1.5 + 1 }} {{ 10 / 4 * 2 }}
{{ 'a' + 'b' }} {{ 'ab' * 3 }} {{ [1] + [2, 3] }} {{ 1 ~ 2 ~ 'x' ~ none ~ true }} {{ -3 }} {{ - 3 + 5 }} {{ +4 }} {{ -2.5 }}
{{ 1 < 2 }} {{ 2 <= 2 }} {{ 3 > 4 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ 1 != 2 }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ true == 1 }} {{ none == none }}
{{ 'ell' in 'hello' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1, 2] }} {{ 'z' not in 'abc' }}
{{ true and false }} {{ true or false }} {{ not true }} {{ not 0 }} {{ 0 or 'fallback' }} {{ 'x' and 'y' }} {{ none or [] }} {{ not messages }}
{{ 'yes' if messages|length > 1 else 'no' }} {{ 'a' if false else 'b' if true else 'c' }} [{{ 'only' if false }}]
{{ 'tab\\tquote\\'dq\\"nl\\n' }} {{ "double 'q'" }} {{ 'adjacent' 'strings' }} {{ '\\u00e9\\x41' }} {{ 'back\\\\slash' }}
{{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e3 }} {{ 1_000 }} {{ 2.5e-5 }} {{ 123456789.0 * 1000000000 }} {{ 1 / 3 }} {{ 0.0001 }} {{ 1e16 }}
{{ [1, 'two', none, true, 2.5, [3], {'k': 'v'}] }} {{ (1,) }} {{ (1, 'a') }} {{ () }} {{ {'a': [1, {'b': none}]} }} {{ "it's" }} {{ ["it's", 'say "hi"'] }}
{{ True }} {{ False }} {{ None }} {{ none }} {{ true }}
""")

template("tests", """{% for v in [none, true, false, 0, 1, 2.5, 'str', '', [1], {'a': 1}] %}
{{ v is none }} {{ v is boolean }} {{ v is true }} {{ v is false }} {{ v is number }} {{ v is integer }} {{ v is float }} {{ v is string }} {{ v is mapping }} {{ v is iterable }} {{ v is sequence }} {{ v is defined }}
{% endfor %}
{{ undefined_thing is defined }} {{ undefined_thing is undefined }} {{ undefined_thing is not defined }} {{ messages is defined }} {{ messages[0].missing is defined }} {{ add_generation_prompt is boolean }}
{{ 4 is even }} {{ 4 is odd }} {{ 9 is divisibleby 3 }} {{ 10 is divisibleby(3) }} {{ 'a' is equalto 'a' }} {{ 3 is eq 3 }} {{ 3 is ne 4 }} {{ 2 is lt 3 }} {{ 'x' is in 'xyz' }} {{ 2 is in [1, 2] }}
{{ 'abc' is lower }} {{ 'ABC' is upper }} {{ range is callable }} {{ 1 is sameas 1 }} {{ none is sameas none }} {{ messages is not string }} {{ not messages is none }}
""")

template("string_methods", """{% for m in messages %}
[{{ m.content.strip() }}|{{ m.content.lstrip() }}|{{ m.content.rstrip() }}|{{ m.content.upper() }}|{{ m.content.lower() }}|{{ m.content.title() }}]
{% endfor %}
{{ 'a,b,,c'.split(',') }} {{ '  a  b \\n c '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a-b-c'.split('-', -1) }} {{ ''.split() }} {{ ''.split(',') }}
{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.startswith(('x', 'h')) }} {{ 'hello'.endswith('x') }}
{{ 'xxhixx'.strip('x') }} {{ 'xxhixx'.lstrip('x') }} {{ 'xxhixx'.rstrip('x') }} {{ '\\n\\n  text'.lstrip('\\n') }} {{ 'they\\'re bill\\'s 1st'.title() }} {{ 'hELLO'.capitalize() }}
{{ 'aaa'.replace('a', 'b') }} {{ 'aaa'.replace('a', 'b', 1) }} {{ 'abcabc'.find('c') }} {{ 'abcabc'.count('bc') }} {{ ', '.join(['x', 'y']) }} {{ '123'.isdigit() }} {{ 'a\\nb\\r\\nc'.splitlines() }}
{{ messages[0].content.split(' ')[0] }} {{ messages[-1]['content'].strip().split('\\n')|length }}
""")

template("whitespace_control", """  <a>
    {% if true %}
    indented block line
    {% endif %}
  {%- if true %}   stripped-left
  {% endif -%}
   stripped-right
  {{ 'var' }}   {{- 'glued' -}}   !
  {# a comment #}
  {#- stripped comment -#}
  after comments
{%+ if true %}plus keeps indentation{% endif +%}
kept newline
  {% for m in messages %}
    - {{ m.role }}
  {% endfor %}
{% if false %}x{% else %}
else branch
{% endif %}
    {{ 'var at indent' }}
end



""")

template("undefined_behaviour", """[{{ missing }}] [{{ missing|default('d') }}] [{{ missing|length }}] [{% for x in missing %}{{ x }}{% endfor %}] [{{ missing ~ 'cat' }}]
[{{ messages[0].nope }}] [{{ messages[0]['nope'] }}] [{{ messages[99] }}] [{{ messages[0].nope is defined }}] [{{ missing is none }}] [{{ missing == missing }}]
[{{ none }}] [{{ none|string }}] [{{ missing|string }}] [{{ missing|trim }}] [{{ missing|upper }}] [{% if missing %}t{% else %}f{% endif %}] [{{ not missing }}] [{{ missing is iterable }}]
[{{ tools }}] [{{ documents is none }}] [{{ bos_token }}{{ eos_token }}]
""")

template("loop_controls", """{% for m in messages %}{% if loop.index0 == 1 %}{% continue %}{% endif %}{{ m.role }};{% if loop.index == 3 %}{% break %}{% endif %}{% endfor %}
{% for i in range(10) %}{% if i is odd %}{% continue %}{% endif %}{% if i > 6 %}{% break %}{% endif %}{{ i }}{% endfor %}
{% for i in range(2, 12, 3) %}{{ i }},{% endfor %} {% for i in range(5, 0, -2) %}{{ i }}{% endfor %} {{ range(3)|list }}
{% set d = dict(a=1, b='two') %}{{ d }} {{ dict(d, c=3) }}
""")

template("strftime", "{% set today = strftime_now('%d %B %Y') %}{{ today|length > 8 }} {{ strftime_now('%Y')|length }}", ["user_only"])

template("raise_on_system", "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System messages are not supported by this template; found: ' ~ m.content) }}{% endif %}{{ m.content }}{% endfor %}")


def render(source, messages, add_generation_prompt, context):
    rendered, _ = render_jinja_template(conversations=[messages], chat_template=source,
                                        add_generation_prompt=add_generation_prompt, **context)
    return rendered[0]


def case_for(name, source, conv_name, messages, add_generation_prompt, context, model=None):
    case = {"name": f"{name}/{conv_name}/{'gen' if add_generation_prompt else 'nogen'}",
            "template": name, "messages": messages,
            "add_generation_prompt": add_generation_prompt, "context": context}
    if model:
        case["model"] = model
    try:
        if model:
            tok = AutoTokenizer.from_pretrained(os.path.join(SHARED, "models", model))
            out = tok.apply_chat_template(messages, tokenize=False,
                                          add_generation_prompt=add_generation_prompt)
            # The template sees bos_token/eos_token from the tokenizer; kbit's caller passes them.
            case["context"] = {"bos_token": tok.bos_token, "eos_token": tok.eos_token}
            assert out == render(source, messages, add_generation_prompt, case["context"])
        else:
            out = render(source, messages, add_generation_prompt, context)
        case["expected"] = out
    except jinja2.exceptions.TemplateError as e:
        case["error"] = str(e)
        case["error_kind"] = ("raise_exception" if type(e) is jinja2.exceptions.TemplateError
                              else type(e).__name__)
    return case


def main():
    cases = []
    sources = {}
    models_dir = os.path.join(SHARED, "models")
    for model in sorted(os.listdir(models_dir)):
        path = os.path.join(models_dir, model, "chat_template.jinja")
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            source = f.read()
        sources[f"model:{model}"] = source
        for conv_name, messages in CONVERSATIONS.items():
            for gen in (False, True):
                cases.append(case_for(f"model:{model}", source, conv_name, messages, gen, {}, model))
    for name, (source, conversations, extra) in TEMPLATES.items():
        sources[name] = source
        for conv_name in conversations:
            for gen in (False, True):
                cases.append(case_for(name, source, conv_name, CONVERSATIONS[conv_name], gen,
                                      {**TOKENS, **extra}))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"generator": "scripts/dev/make_chat_template_expectations.py",
                   "transformers_render": "render_jinja_template / apply_chat_template(tokenize=False)",
                   "templates": sources, "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    errors = sum(1 for c in cases if "error" in c)
    print(f"wrote {len(cases)} cases ({errors} expected errors, {len(TEMPLATES)} own templates) to {OUT}",
          file=sys.stderr)


if __name__ == "__main__":
    main()

"""Bodies shaped like Claude Code's requests: a long tool-use session with
prompt-caching marks, thinking (signed and redacted) blocks, images,
`metadata.user_id`, and the beta headers Claude Code sends, written as a
JavaScript client writes JSON (compact, non-ASCII characters as they are)."""

from __future__ import annotations

import json
from typing import Any

CLIENT_MODEL = "claude-sonnet-4-5-20250929"
HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": (
        "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"
    ),
}
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
    "AAAABJRU5ErkJggg=="
)
LONG_INSTRUCTIONS = "\n".join(
    f"{i}. Follow the repository’s conventions — “quotes”, ünïcödé, 日本語, emoji 🧪, tabs\t"  # noqa: RUF001
    f"and line\u2028separators stay as written; numbers such as 1e-7, 0.1, 2.50 and -0.0 too."
    for i in range(1, 120)
)
TOOLS: list[dict[str, Any]] = [
    {
        "name": "Bash",
        "description": "Executes a given bash command in a persistent shell session.",
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command to execute"},
                "timeout": {"type": "number", "description": "Optional timeout in ms"},
                "description": {"type": "string"},
            },
            "required": ["command"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    },
    {
        "name": "Read",
        "description": "Reads a file from the local filesystem.",
        "input_schema": {
            "type": "object",
            "properties": {"file_path": {"type": "string"}, "offset": {"type": "number"}},
            "required": ["file_path"],
        },
    },
    {
        "name": "Edit",
        "description": "Performs exact string replacements in files.",
        "input_schema": {
            "type": "object",
            "properties": {
                "file_path": {"type": "string"},
                "old_string": {"type": "string"},
                "new_string": {"type": "string"},
                "replace_all": {"type": "boolean", "default": False},
            },
            "required": ["file_path", "old_string", "new_string"],
        },
        "cache_control": {"type": "ephemeral"},
    },
]


def first_turns() -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "<system-reminder>\nAs you answer, use the tools.\n</system-reminder>",
                },
                {
                    "type": "text",
                    "text": "Fix the failing test in tests/test_x.py",
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "thinking",
                    "thinking": "The user wants the test fixed. First I run it.",
                    "signature": "EqQBCkgIBhABGAIiQM0a+signature/of+the+first+turn==",
                },
                {"type": "text", "text": "I'll run the tests first."},
                {
                    "type": "tool_use",
                    "id": "toolu_01A",
                    "name": "Bash",
                    "input": {"command": "pytest -q tests/test_x.py", "timeout": 120000.5},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01A",
                    "content": "F\n1 failed in 0.12s",
                    "is_error": True,
                }
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "redacted_thinking", "data": "EmwKAhgBEgyredacted+opaque+bytes=="},
                {
                    "type": "tool_use",
                    "id": "toolu_01B",
                    "name": "Read",
                    "input": {"file_path": "/repo/tests/test_x.py"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01B",
                    "content": [
                        {
                            "type": "text",
                            "text": "     1\tdef test_x():\n     2\t    assert 1 + 1 == 3\n",
                        }
                    ],
                },
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
                {
                    "type": "text",
                    "text": "Here is a screenshot of the failure.",
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                },
            ],
        },
    ]


def body(messages: list[dict[str, Any]], *, stream: bool = True) -> dict[str, Any]:
    return {
        "model": CLIENT_MODEL,
        "messages": messages,
        "temperature": 1,
        "system": [
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": LONG_INSTRUCTIONS, "cache_control": {"type": "ephemeral"}},
        ],
        "tools": TOOLS,
        "metadata": {"user_id": "user_5f0c2b_account__session_8d3e1a77-1c2b-4e5f-9a0b"},
        "max_tokens": 32000,
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "stream": stream,
    }


def wire(value: dict[str, Any]) -> bytes:
    """The bytes a JavaScript client sends: JSON.stringify's compact form."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

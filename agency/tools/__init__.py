"""Tools agents can call: ``retrieve`` (agency memory), ``python`` (sandboxed) and
``web_search`` (off by default). See :mod:`agency.tools.registry`."""
from __future__ import annotations

from agency.tools.base import ROLES, Tool, ToolArgs, ToolCall, ToolContext, ToolError, ToolResult, clip
from agency.tools.python_sandbox import (
    PythonSandbox,
    PythonTool,
    SandboxLimits,
    SandboxResult,
)
from agency.tools.registry import Recorder, ToolPolicy, ToolRegistry, build_registry
from agency.tools.retrieve import RetrieveTool
from agency.tools.web_search import WebSearchTool

__all__ = [
    "ROLES",
    "PythonSandbox",
    "PythonTool",
    "Recorder",
    "RetrieveTool",
    "SandboxLimits",
    "SandboxResult",
    "Tool",
    "ToolArgs",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "ToolPolicy",
    "ToolRegistry",
    "ToolResult",
    "WebSearchTool",
    "build_registry",
    "clip",
]

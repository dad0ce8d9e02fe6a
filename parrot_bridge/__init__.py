"""Parrot client SDK: Semantic Variables, semantic functions and sessions.

import parrot_bridge as P

@P.semantic_function(max_tokens=64, temperature=0)
def summarize(doc):
    '''Summarize: {{input:doc}}
    Summary: {{output:summary}}'''

with P.Session("http://127.0.0.1:9000"):
    print(summarize("...").get())
"""

from parrot_bridge.errors import CallFailedError, ParrotError
from parrot_bridge.function import SemanticFunction, semantic_function
from parrot_bridge.session import Session, current_session
from parrot_bridge.template import Template, TemplateError, parse_template
from parrot_bridge.variable import Criteria, SemanticVariable, variable

__all__ = [
    "CallFailedError",
    "Criteria",
    "ParrotError",
    "SemanticFunction",
    "SemanticVariable",
    "Session",
    "Template",
    "TemplateError",
    "current_session",
    "parse_template",
    "semantic_function",
    "variable",
]

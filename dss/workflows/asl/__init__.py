"""The Amazon States Language as the embedded executor understands it: a checked model of a definition
(`model`), reference paths (`jsonpath`), payload templates and the input/output pipeline (`dataflow`) and
choice rules (`choice`). Nothing here runs anything; `dss.workflows.interpreter` does.
"""
from dss.workflows.asl.jsonpath import JsonPath
from dss.workflows.asl.model import Catcher, Machine, Retrier, State, load_machine

__all__ = ["JsonPath", "Machine", "State", "Retrier", "Catcher", "load_machine"]

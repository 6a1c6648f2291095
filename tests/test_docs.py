"""The documents are valid reStructuredText and name every public name of hein."""

import inspect
from pathlib import Path

import docutils.core
import docutils.nodes
import pytest

import hein
from hein import SocReceiver, SocTransmitter

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["README.rst", "PROTOCOL.rst", "CHANGELOG.rst"])
def test_document_is_valid_restructuredtext(name):
    document = docutils.core.publish_doctree(
        (ROOT / name).read_text(encoding="utf-8"),
        settings_overrides={"report_level": 5, "halt_level": 5},
    )
    problems = [
        node.astext()
        for node in document.findall(docutils.nodes.system_message)
        if node["level"] >= 2
    ]
    assert problems == []


def public_methods(cls):
    return {
        name
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and (callable(member) or isinstance(member, property))
    }


def test_readme_names_every_public_name():
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    names = set(hein.__all__) - {"__version__"}
    names |= public_methods(SocTransmitter) | public_methods(SocReceiver)
    names |= {"_newconnection", "_dropped", "_missed", "process"}
    missing = sorted(name for name in names if name not in readme)
    assert missing == []

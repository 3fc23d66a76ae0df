"""Registries with metadata: what each adapter declares, and the registry's errors."""

from __future__ import annotations

import inspect
import re

import pytest

from stream_monitor.adapters import ADAPTERS, Adapter, AdapterInfo
from stream_monitor.adapters.base import AdapterRegistry
from stream_monitor.registry import Info, Registry, UnknownNameError


def accepts(cls: type, *names: str) -> bool:
    return all(name in inspect.signature(cls).parameters for name in names)


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_every_adapter_declares_its_metadata(name):
    info = ADAPTERS.info(name)
    assert isinstance(info, AdapterInfo) and info.name == name
    assert info.cls is ADAPTERS.get(name) and issubclass(info.cls, Adapter)
    assert info.description and "\n" not in info.description
    # What the metadata promises, the constructor takes.
    if info.fisher_images:
        assert accepts(info.cls, "fisher_images")
    if info.input_normalisation:
        assert accepts(info.cls, "input_mean", "input_std")


def test_the_metadata_is_frozen():
    with pytest.raises(AttributeError, match="cannot assign"):
        ADAPTERS.info("eata").fisher_images = 0  # type: ignore[misc]


def test_metadata_replaces_the_name_branches():
    needs = {info.name: (info.fisher_images, info.input_normalisation) for info in ADAPTERS.infos()}
    assert needs.pop("eata") == (2000, False)  # the reference's --fisher_size
    assert needs.pop("cotta") == (0, True)
    assert set(needs.values()) == {(0, False)}


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="adapter 'tent' is registered twice"):
        ADAPTERS.register("tent", description="another Tent")(type("Tent2", (), {}))
    assert ADAPTERS.info("tent").cls.__name__ == "Tent"


def test_an_unknown_name_lists_the_valid_ones():
    message = f"Unknown adapter 'tnet'. Did you mean 'tent'? Valid adapters: {', '.join(ADAPTERS.names())}."
    with pytest.raises(UnknownNameError, match=re.escape(message)):
        ADAPTERS.info("tnet")
    with pytest.raises(UnknownNameError, match="Valid adapters: cotta, eata"):
        ADAPTERS.get("nope")


def test_an_adapter_needs_a_description_and_known_metadata():
    registry = AdapterRegistry()
    with pytest.raises(ValueError, match="adapter 'x' needs a description"):
        registry.register("x")(Adapter)
    with pytest.raises(ValueError, match="fisher_images must be >= 0, got -1"):
        registry.register("x", description="d", fisher_images=-1)(Adapter)
    with pytest.raises(TypeError, match="unexpected keyword argument 'fisher_size'"):
        registry.register("x", description="d", fisher_size=2000)(Adapter)
    assert len(registry) == 0


def test_a_plain_registry_keeps_name_to_object_and_optional_descriptions():
    widgets: Registry[int] = Registry("widget")
    widgets.register("one")(1)
    widgets.register("two", description="the second")(2)
    assert widgets.get("one") == 1 and widgets.names() == ["one", "two"] and list(widgets) == ["one", "two"]
    assert widgets.infos() == [Info("one", 1, ""), Info("two", 2, "the second")]
    assert "two" in widgets and "three" not in widgets and len(widgets) == 2
    with pytest.raises(UnknownNameError, match="Unknown widget 'three'. Valid widgets: one, two."):
        widgets.info("three")

"""Properties over generated traces (the hypothesis strategy shares the run engine's
generator): old and new agree up to the known list, and a model never diverges from itself."""
import pytest
from hypothesis import given, note

from fuzz.engines.generate import GenConfig, traces
from fuzz.runner import Side, run_trace
from language.trace import dumps
from impls import registry
from oracles.triage import load_known

KNOWN = load_known()


def gen_for(arch):
    cls = registry.resolve(arch, "v5.12")
    return traces(GenConfig(address_space_num=cls.address_space_num, max_events=30,
                            x86_shadow_paging=arch.startswith("x86")))


def unknown(arch, old, new, events):
    res = run_trace(events, arch, Side(old, registry.resolve(arch, old)),
                    Side(new, registry.resolve(arch, new)), KNOWN)
    return [d.signature for d in res.divergences if not d.known]


@given(gen_for("x86-shadow"))
def test_x86_shadow_v5_12_and_v5_13_agree_up_to_the_known_list(events):
    note(dumps(events))
    assert unknown("x86-shadow", "v5.12", "v5.13", events) == []


@pytest.mark.parametrize("arch", registry.implemented_arches())
@pytest.mark.parametrize("old, new", [("v5.12", "v5.13"), ("v5.13-rc1", "v5.13")])
def test_every_arch_agrees_up_to_the_known_list(arch, old, new):
    @given(gen_for(arch))
    def check(events):
        note(dumps(events))
        assert unknown(arch, old, new, events) == []
    check()


@pytest.mark.parametrize("arch", registry.implemented_arches())
def test_a_version_never_diverges_from_itself_on_one_side(arch):
    @given(gen_for(arch))
    def check(events):
        res = run_trace(events, arch, Side("a", registry.resolve(arch, "v5.13")),
                        Side("b", registry.resolve(arch, "v5.13")), KNOWN)
        assert [d.signature for d in res.divergences if d.wrong_side != "both"] == []
    check()

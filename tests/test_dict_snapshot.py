"""_core.DictSnapshot: what optcore.torch compares each step against the state it
planned over (identity of every key and value, one level of inner dicts)."""
from __future__ import annotations

import collections

import pytest

from optcore import _core


def _state():
    keys = [object() for _ in range(3)]
    outer = collections.defaultdict(dict)
    for i, k in enumerate(keys):
        outer[k] = {"step": i, "exp_avg": [i], "exp_avg_sq": [i, i]}
    return keys, outer


EDITS = {
    "an entry replaced by an equal dict": lambda k, d: d.__setitem__(k[1], dict(d[k[1]])),
    "an entry deleted": lambda k, d: d.pop(k[0]),
    "an entry added": lambda k, d: d.__setitem__(object(), {}),
    "an entry deleted and put back": lambda k, d: d.__setitem__(k[0], d.pop(k[0])),
    "an inner value reassigned to an equal value": lambda k, d: d[k[2]].__setitem__(
        "exp_avg", list(d[k[2]]["exp_avg"])),
    "an inner item added": lambda k, d: d[k[0]].__setitem__("extra", 1),
    "an inner item deleted": lambda k, d: d[k[0]].pop("step"),
    "cleared": lambda k, d: d.clear(),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_any_change_of_identity_is_seen(edit):
    keys, outer = _state()
    snap = _core.DictSnapshot(outer)
    assert snap.same(outer)
    EDITS[edit](keys, outer)
    assert not snap.same(outer)


def test_unchanged_and_in_place_edits_of_values_are_the_same():
    keys, outer = _state()
    snap = _core.DictSnapshot(outer)
    outer[keys[0]]["exp_avg"].append(5)  # the same object edited: the values are still its
    assert snap.same(outer)
    # a shallow copy holds the very same items (a state that steps the same buffers)
    assert snap.same(dict(outer))


def test_not_a_dict_is_not_the_same():
    _, outer = _state()
    assert not _core.DictSnapshot(outer).same([])

"""Rules broken on purpose, to show the simulation finds each (``make sim BREAK=<rule>``).

Only the simulation sets one (:func:`set_broken`); a process of the stack never does. Each is
checked where its rule lives, so the break is the rule's own code path, not a harness's.
"""

from __future__ import annotations

RULES = {
    "commit_without_majority": "an entry commits once the primary holds it (no majority)",
    "ack_before_sync": "a follower answers, and a primary counts itself, before the log is synced",
    "lease_without_quorum": "a primary's lease outlasts what its followers promised it",
    "read_from_fenced": "a replica serves strong reads whatever its role and epoch",
    "skip_first_entry": "a new primary serves without its first entry of the epoch applied",
    "forget_sessions": "a session's repeated write is applied again, not answered from its record",
    "learner_counts": "a learner's acknowledgement counts towards the voters' majority",
    "swap_in_one_step": "a replica move swaps the source for the target in one epoch",
    "reconfig_before_established": "a voter set changes again before its epoch is established",
    "commit_when_deposed": "live resharding's entries are sequenced by a primary that stepped down",
    "hand_over_early": "a primary hands over before its successor holds its log (and it leads)",
}

_broken = ""


def set_broken(rule: str) -> None:
    if rule and rule not in RULES:
        raise ValueError(f"no rule {rule!r} to break; one of {', '.join(RULES)}")
    global _broken
    _broken = rule


def broken(rule: str) -> bool:
    return _broken == rule

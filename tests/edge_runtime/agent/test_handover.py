from __future__ import annotations

from collections.abc import Sequence

import pytest

from edge_runtime.agent.handover import HandoverError, IptablesRedirect


class FakeIptables:
    """Just enough of iptables' nat table to check the commands the redirect issues."""

    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {"OUTPUT": [], "PREROUTING": []}
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], stdin: str | None) -> tuple[int, str]:
        self.calls.append(list(argv))
        if argv[0].endswith("-restore"):
            assert stdin is not None
            lines = stdin.splitlines()
            chain = lines[1][1:].split()[0]
            self.chains[chain] = [line for line in lines if line.startswith("-A ")]
            return 0, ""
        args = list(argv[4:])
        op, chain = args[0], args[1]
        rule = " ".join(args[2:])
        if op == "-S":
            if chain not in self.chains:
                return 1, "No chain"
            return 0, "\n".join([f"-N {chain}", *self.chains[chain]])
        if op == "-N":
            self.chains[chain] = []
        elif op == "-C":
            return (0, "") if rule in self.chains[chain] else (1, "")
        elif op == "-I":
            self.chains[chain].insert(0, " ".join(args[3:]))
        elif op == "-D":
            if rule not in self.chains[chain]:
                return 1, ""
            self.chains[chain].remove(rule)
        elif op == "-X":
            self.chains.pop(chain, None)
        return 0, ""


def test_point_to_sets_up_the_chain_once_and_replaces_the_rule() -> None:
    ipt = FakeIptables()
    switch = IptablesRedirect(8080, runner=ipt)
    assert switch.target() is None
    switch.point_to(18081)
    assert switch.target() == 18081
    switch.point_to(18082)
    assert switch.target() == 18082
    assert ipt.chains["OTAML-8080"] == ["-A OTAML-8080 -p tcp --dport 8080 -j REDIRECT --to-ports 18082"]
    assert len(ipt.chains["OUTPUT"]) == 1
    assert len(ipt.chains["PREROUTING"]) == 1
    switch.remove()
    assert "OTAML-8080" not in ipt.chains
    assert ipt.chains["OUTPUT"] == []


def test_a_failed_restore_is_reported() -> None:
    def runner(argv: Sequence[str], stdin: str | None) -> tuple[int, str]:
        return (1, "iptables-restore: Permission denied") if argv[0].endswith("-restore") else (0, "")

    with pytest.raises(HandoverError, match="Permission denied"):
        IptablesRedirect(8080, runner=runner).point_to(18081)


def test_a_removed_jump_means_no_redirect_and_point_to_restores_it() -> None:
    ipt = FakeIptables()
    switch = IptablesRedirect(8080, runner=ipt)
    switch.point_to(18081)
    ipt.chains["OUTPUT"].clear()
    assert switch.target() is None
    switch.point_to(18081)
    assert switch.target() == 18081

"""Real daemons on a real (virtual) LAN: network namespaces on a bridge, with loss and partitions.

sim/netlab.py builds the hosts inside an unprivileged user namespace; everything
it makes disappears with it, whatever happens to the test.
"""

from __future__ import annotations

import subprocess

import pytest

from sim.netlab import NetLab


@pytest.fixture(scope="module")
def lab() -> NetLab:
    with NetLab(10, loss=10) as lab:
        lab.start_all()
        yield lab  # type: ignore[misc]
    assert lab.process.poll() is not None, "the controller is gone, and its namespaces with it"


def all_alive(lab: NetLab, hosts: list[int], among: list[int]) -> bool:
    ids = {lab.node_id(h) for h in among}
    for h in hosts:
        states = lab.peers(h)
        if any(states.get(i) != "alive" for i in ids if i != lab.node_id(h)):
            return False
    return True


def test_ten_hosts_at_ten_percent_loss_all_see_each_other(lab: NetLab) -> None:
    everyone = list(range(1, 11))
    lab.wait_until(lambda: all_alive(lab, everyone, everyone), timeout=60, what="every host to see the other 9 alive")
    assert "labbr0" not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout, "the lab stays in its namespaces"


def test_a_partition_into_halves_is_seen_and_after_healing_membership_and_store_converge(lab: NetLab) -> None:
    everyone = list(range(1, 11))
    lab.wait_until(lambda: all_alive(lab, everyone, everyone), timeout=60, what="a settled network")
    left, right = everyone[:5], everyone[5:]
    lab.partition(left, right)
    right_ids = {lab.node_id(h) for h in right}

    def left_sees_right_gone() -> bool:
        return all(all(lab.peers(h).get(i) in ("dead", "suspect") for i in right_ids) for h in left)

    lab.wait_until(left_sees_right_gone, timeout=60, what="each half to see the other gone")
    lab.call(1, "store.put", key="written/left", value="L")
    lab.call(6, "store.put", key="written/right", value="R")
    lab.call(2, "store.put", key="written/both", value="from the left")
    lab.call(7, "store.put", key="written/both", value="from the right")
    lab.heal()
    lab.wait_until(lambda: all_alive(lab, everyone, everyone), timeout=90, what="one network again")

    def store_converged() -> bool:
        views = [lab.call(h, "store.list", prefix="written/") for h in everyone]
        first = [(e["key"], e["value"]) for e in views[0]]
        return len(first) == 3 and all([(e["key"], e["value"]) for e in v] == first for v in views)

    lab.wait_until(store_converged, timeout=90, what="the store to converge on every host")


def test_a_thousand_messages_among_five_hosts_at_ten_percent_loss_arrive_once_and_in_order(lab: NetLab) -> None:
    five = [1, 2, 3, 4, 5]
    lab.wait_until(lambda: all_alive(lab, five, five), timeout=90, what="five hosts alive to each other")
    per_pair = 50
    for i in range(per_pair):
        for sender in five:
            for receiver in five:
                if receiver != sender:
                    lab.call(sender, "chat.send", peer=f"h{receiver}", text=f"h{sender}->h{receiver} #{i}")

    def complete() -> bool:
        for receiver in five:
            for sender in five:
                if sender != receiver:
                    got = lab.call(receiver, "chat.log", peer=f"h{sender}", limit=500)
                    if len([m for m in got if m["direction"] == "in"]) < per_pair:
                        return False
        return True

    lab.wait_until(complete, timeout=180, what="all 1,000 messages delivered")
    for receiver in five:
        for sender in five:
            if sender == receiver:
                continue
            received = [m for m in lab.call(receiver, "chat.log", peer=f"h{sender}", limit=500) if m["direction"] == "in"]
            assert [m["text"] for m in received] == [f"h{sender}->h{receiver} #{i}" for i in range(per_pair)], "none lost, none twice, in order"
            assert [m["seq"] for m in received] == list(range(1, per_pair + 1))


def test_a_group_of_five_at_ten_percent_loss_gets_every_message_once_and_in_order(lab: NetLab) -> None:
    five = [6, 7, 8, 9, 10]
    lab.wait_until(lambda: all_alive(lab, five, five), timeout=90, what="five hosts alive to each other")
    gid = lab.call(6, "group.create", name="lab", members=[f"h{h}" for h in five[1:]])["id"]
    lab.wait_until(lambda: all(lab.call(h, "group.list") for h in five), timeout=60, what="every member to know the group")
    per_sender = 40
    for i in range(per_sender):
        for sender in five:
            lab.call(sender, "chat.send", group=gid, text=f"h{sender} #{i}")

    def texts(host: int) -> list[str]:
        return [m["text"] for m in lab.call(host, "chat.log", group=gid, limit=500) if m["kind"] == "text"]

    lab.wait_until(lambda: all(len(texts(h)) >= per_sender * 5 for h in five), timeout=180, what="all 200 group messages on every member")
    logs = {h: lab.call(h, "chat.log", group=gid, limit=500) for h in five}
    for host, log in logs.items():
        assert [m["id"] for m in log] == [m["id"] for m in logs[6]], "the same order on every member"
        for sender in five:
            mine = [m["text"] for m in log if m["kind"] == "text" and m["text"].startswith(f"h{sender} ")]
            assert mine == [f"h{sender} #{i}" for i in range(per_sender)], "none lost, none twice, each sender's in order"

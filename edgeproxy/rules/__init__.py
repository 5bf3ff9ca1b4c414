"""edgeproxy's capture rules: pure rendering, backends that apply them, and the keeper.

* `render` turns the desired state into a `RuleSet` (iptables-restore text per family and table,
  and one `nft -f` text per family) without touching the system.
* `iptables_text` parses iptables-save/restore text and compares rules semantically.
* `backends` apply a RuleSet (iptables-legacy, iptables-nft, nftables) and repair drift.
* `keeper` re-checks every second and flushes UDP conntrack entries (`conntrack`).
"""

"""An adversarial suite: raw pyzmq attackers against a live `rain serve` (issue 7)."""

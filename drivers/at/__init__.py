"""AT-command modem driver: framing -> commands -> driver facade, plus a pure PDU codec."""

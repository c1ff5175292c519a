"""GoIP / Hybertone / DBLTek gateways over the UDP "SMS server" protocol (research/gateways.md
section 2, Appendix A).

:mod:`.wire` parses and formats datagrams, :mod:`.line` holds one line's state and maps its
keepalive to a SimInfo, :mod:`.commands` runs server -> GoIP commands, :mod:`.config` is the
``[[devices]]`` table and :mod:`.driver` ties them to one UDP socket.
"""

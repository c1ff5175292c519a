"""End to end over AT modems: emulated modems, the real agent process, the reference hub."""

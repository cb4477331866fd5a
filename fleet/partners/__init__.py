"""Stage 6: external demand partners called over OpenRTB in parallel with internal pricing."""

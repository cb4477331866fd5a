"""One region replica's runtime in plain Python (``runtime.Region``): the bidder and the region's
components (cache client, ledger emitter and notice path, model versions, control sync,
telemetry) behind small interfaces, and their loops. No Ray here: ``fleet.serve`` wires it."""

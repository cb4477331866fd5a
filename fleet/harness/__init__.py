"""In-process harnesses that drive the fleet's own code (control, lease budgets, the bid path)
for tests and models: not the simulator, which talks to the fleet over HTTP (``fleet.sim``)."""

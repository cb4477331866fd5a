"""Central control: budgets and pacing leases, model rollouts, cutoff policies, region health."""

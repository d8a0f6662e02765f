"""Stage `eval`: the run's models scored on the verifiable suites through the endpoint."""

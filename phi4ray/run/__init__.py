"""Running stages: the stage contract, manifests, run paths, the report, the console, errors,
`key=value` overrides and the retry policy."""

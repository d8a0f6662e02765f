"""Stage `pts` (PTS actors on the fleet) and the fleet as judge-guided policy and judge."""

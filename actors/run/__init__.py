"""The Ray cluster a run started or joined, and running a function off the driver."""

"""Ray actors and Serve deployments that put the phi4ray library to work."""

"""A real Stash server for the tests: built from the Go module proxy, run in a temp folder."""

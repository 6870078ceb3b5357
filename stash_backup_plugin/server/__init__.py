"""Talking to a running Stash: connection, HTTP session, GraphQL client, download."""

"""HTTP and GraphQL failure modes of the Stash client (responses: a real Stash cannot
be made to answer 404 or 500 on demand). Each becomes one typed, readable error."""

import re

import pytest
import responses

from stash_backup_plugin.server.connection import Connection
from stash_backup_plugin.core.errors import AuthError, ServerError
from stash_backup_plugin.server.graphql_client import StashClient

URL = "http://stash.test:9999"


def client(key=None):
    return StashClient(Connection(URL, api_key=key))


@responses.activate
@pytest.mark.parametrize(
    "status,kind,message",
    [
        (401, AuthError, "refused the request (401)"),
        (403, AuthError, "refused the request (403)"),
        (404, ServerError, "answered HTTP 404"),
        (500, ServerError, "answered HTTP 500"),
    ],
)
def test_http_status_becomes_a_typed_error(status, kind, message):
    responses.post(f"{URL}/graphql", status=status, body="nope")
    with pytest.raises(kind, match=re.escape(message)) as raised:
        client("the-key").server_info()
    assert "the-key" not in str(raised.value)


@responses.activate
def test_graphql_error_message_is_passed_on():
    responses.post(f"{URL}/graphql", json={"errors": [{"message": "database is locked"}], "data": None})
    with pytest.raises(ServerError, match="Stash answered with an error: database is locked"):
        client().backup_database(download=True)


@responses.activate
def test_a_page_that_is_not_graphql():
    responses.post(f"{URL}/graphql", body="<html>login</html>", status=200, content_type="text/html")
    with pytest.raises(ServerError, match="did not answer like a Stash GraphQL server"):
        client().server_info()


@responses.activate
def test_api_key_goes_in_the_header_and_never_in_the_url():
    responses.post(f"{URL}/graphql", json={"data": {"backupDatabase": None}})
    client("the-key").backup_database(download=False, include_blobs=None)
    request = responses.calls[0].request
    assert request.headers["ApiKey"] == "the-key" and "the-key" not in request.url
    assert b"includeBlobs" not in request.body  # an older server would reject the unknown field

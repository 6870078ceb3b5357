"""Remote strings read as rclone reads them (fs/fspath/path.go), the secrets of one
moved into rclone's environment, and which files in the remote's pending/ are lock
markers. Pure: no rclone, no server."""

from __future__ import annotations

import pytest

from stash_backup_plugin.core.errors import UsageError
from stash_backup_plugin.offsite.fspath import RemotePath, parse
from stash_backup_plugin.offsite.rclone import config_variable, secrets_to_environment
from stash_backup_plugin.offsite.remote import is_marker_name, is_upload_leftover


@pytest.mark.parametrize(
    "spec, name, path, options",
    [
        ("remote:path/to/dir", "remote", "path/to/dir", ()),
        ("remote:", "remote", "", ()),  # the remote's root
        ("remote:/abs/on/server", "remote", "/abs/on/server", ()),
        ("my remote.x+y@z-1:p", "my remote.x+y@z-1", "p", ()),
        ("/local/folder", "", "/local/folder", ()),
        ("relative/folder", "", "relative/folder", ()),
        ("./a:b", "", "./a:b", ()),  # a path separator before the first `:`: local
        ("/x/y:z", "", "/x/y:z", ()),
        ("file,with,commas", "", "file,with,commas", ()),  # no `:` at all: local
        ("name,secret_access_key=abc:bucket/p", "name", "bucket/p", (("secret_access_key", "abc"),)),
        (":s3:bucket/p", ":s3", "bucket/p", ()),
        (":local:/some/path", ":local", "/some/path", ()),
        (
            ":s3,provider=Minio,endpoint='http://127.0.0.1:9000':bucket/path",
            ":s3",
            "bucket/path",
            (("provider", "Minio"), ("endpoint", "http://127.0.0.1:9000")),
        ),
        ('n,v="it""s, here":p', "n", "p", (("v", 'it"s, here'),)),  # doubled quote: one
        ("n,v='say \"hi\"':p", "n", "p", (("v", 'say "hi"'),)),
        ("n,flag,x=1:p", "n", "p", (("flag", "true"), ("x", "1"))),  # a bare option is "true"
        ("n,x=:p", "n", "p", (("x", ""),)),
        ("C:\\x", "C", "\\x", ()),  # not on Windows: a remote named C
    ],
)
def test_remote_strings_are_read_as_rclone_reads_them(spec, name, path, options):
    parsed = parse(spec, windows=False)
    assert (parsed.name, parsed.path, parsed.options) == (name, path, options)
    assert parse(str(parsed), windows=False) == parsed  # written back, it reads the same


@pytest.mark.parametrize("spec", ["C:\\x", "c:/Users/me/backups", "D:"])
def test_a_drive_letter_is_a_local_folder_on_windows(spec):
    assert parse(spec, windows=True) == RemotePath("", spec)


def test_the_root_of_a_remote_keeps_its_options_and_quotes_what_needs_it():
    parsed = parse(":s3,provider=Minio,endpoint='http://h:9':bucket/p", windows=False)
    assert parsed.root == ':s3,provider=Minio,endpoint="http://h:9":' and parsed.backend == "s3"
    assert parse("remote:x").root == "remote:" and parse("/x").root == ""


@pytest.mark.parametrize(
    "spec, why",
    [
        ("", "empty"),
        (":", "needs a trailing ':'"),
        ("::", "can't be empty"),
        (":s3/x:y", "path separator"),
        ("-name:x", "may only contain"),
        ("name :x", "may only contain"),
        ("name,:x", "can't be empty"),
        ("name,opt-x=1:p", "may only contain `0-9`"),
        (":s3,opt", "must end with"),  # a `:` only at the start: an on-the-fly remote, unfinished
        (":s3,opt=1", "must end with"),
        ("name,opt='x:y", "unterminated"),
        ("name,opt='x'y:p", "after a quote"),
    ],
)
def test_what_rclone_would_refuse_is_refused_in_one_line_without_the_string(spec, why):
    with pytest.raises(UsageError) as caught:
        parse(spec, windows=False)
    assert why in str(caught.value) and "\n" not in str(caught.value)
    if len(spec) > 3:
        assert spec not in str(caught.value)


def test_secret_options_move_to_the_environment_and_stay_out_of_the_string():
    named, env = secrets_to_environment(parse("mys3,secret_access_key=S3CRET,region=eu:bucket/x", windows=False))
    assert str(named) == "mys3,region=eu:bucket/x"
    assert env == {"RCLONE_CONFIG_MYS3_SECRET_ACCESS_KEY": "S3CRET"}
    fly, env = secrets_to_environment(
        parse(":s3,provider=Minio,access_key_id=AK,secret_access_key=SK,endpoint='http://h:9':b/p", windows=False)
    )
    assert str(fly) == 'stash_backup_s3,provider=Minio,endpoint="http://h:9":b/p'
    assert env == {
        "RCLONE_CONFIG_STASH_BACKUP_S3_TYPE": "s3",
        "RCLONE_CONFIG_STASH_BACKUP_S3_ACCESS_KEY_ID": "AK",
        "RCLONE_CONFIG_STASH_BACKUP_S3_SECRET_ACCESS_KEY": "SK",
    }
    wrapped, env = secrets_to_environment(
        parse(":crypt,remote=':s3,secret_access_key=INNER:b',password=P:", windows=False)
    )
    assert "INNER" not in str(wrapped) and "P" not in str(wrapped).replace("stash_backup_crypt", "")
    plain = parse(":local:/x", windows=False)
    assert secrets_to_environment(plain) == (plain, {})
    assert config_variable("my-remote", "ignore-size") == "RCLONE_CONFIG_MY-REMOTE_IGNORE_SIZE"  # as rclone's


@pytest.mark.parametrize(
    "relative, marker, leftover",
    [
        ("pending/host.123.json", True, False),
        ("pending/my.host.name.7.json", True, False),
        ("pending/host.123.json.1a2b3c4d.partial", False, True),  # rclone's partial upload
        ("pending/host.123.json.stash-backup-tmp-9.abc-1", False, True),
        ("pending/notes.txt", False, False),
        ("pending/host.json", False, False),
        ("pending/sub/host.1.json", False, False),
    ],
)
def test_only_a_finished_marker_is_a_lock(relative, marker, leftover):
    assert is_marker_name(relative) is marker and is_upload_leftover(relative) is leftover

"""One small hierarchy of errors. Messages are written for the user: what is wrong and
what to do. They are turned into output only at the edges (CLI exit, plugin output)."""


class StashBackupError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1


class UsageError(StashBackupError):
    """The user asked for something that cannot be done as asked."""

    exit_code = 2


class ConfigError(StashBackupError):
    """Stash's config.yml or a plugin setting is missing or wrong."""


class ServerError(StashBackupError):
    """The Stash server could not be reached or answered with an error."""


class AuthError(ServerError):
    """The server refused our credentials (401/403)."""


class DownloadError(ServerError):
    """A backup file could not be transferred completely."""


class LinkExpiredError(DownloadError):
    """The single-use download link is gone (404): a new backup must be requested."""


class StorageError(StashBackupError):
    """A local file could not be written: full disk, no permission, missing folder."""


class VerificationError(StashBackupError):
    """A backup failed verification: it must not be trusted."""


class DamagedDatabase(VerificationError):
    """The database's own pages are damaged (a check found it), as opposed to a copy
    or a transfer having gone wrong."""


class RestoreRefused(StashBackupError):
    """The restore would lose data or cannot be done safely; nothing was changed."""


class RemoteError(StashBackupError):
    """The off-site remote could not be used as asked: unknown, refused our
    credentials, missing, full, unreachable or silent (offsite/)."""


class MissingDependency(StashBackupError):
    """A Python package the plugin needs is not installed in Stash's Python."""

"""The application layer: one module per job (backup, download, verify, retention,
export, migrate, status, drill, offsite), each a library function the plugin and the CLI
call. Importing this package imports none of them: a command imports the job it runs."""

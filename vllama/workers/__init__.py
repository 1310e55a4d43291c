"""Several gateway processes on one port: the main process keeps the scheduler, the supervisor
and systemd; each worker is a full gateway that reaches them over a Unix socket."""

"""Runs on disk and as processes: the run-directory protocol, creating and listing runs, launch commands, the supervisor, device locks, cluster scripts, tailing."""

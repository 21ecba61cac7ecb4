"""Running commands: ptys, the one I/O loop (bridge), attached runs, sessions and their spawner."""

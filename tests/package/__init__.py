"""The package tier: the .deb built, installed, run and purged under a real systemd."""

"""Standard library only: the archive, its checks and policies, shared by every product."""

"""runplane's services: each its own process."""

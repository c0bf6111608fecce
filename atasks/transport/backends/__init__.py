"""Transports that leave the process."""

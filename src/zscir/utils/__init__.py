"""Small shared helpers: atomic file writes, image loading, seeding, devices."""

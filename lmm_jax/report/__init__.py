"""Paper tables and plots, computed from predictions files alone."""

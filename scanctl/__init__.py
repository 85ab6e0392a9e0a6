"""`scanctl`: the operator's command line."""

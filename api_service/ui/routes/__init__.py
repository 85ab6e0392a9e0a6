"""The dashboard's pages, by resource (as the API's routes are)."""
